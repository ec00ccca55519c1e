using System.Diagnostics;
using System.Diagnostics.CodeAnalysis;
using System.Runtime.ExceptionServices;
using Scheduler.Sources;

namespace Scheduler.Timers;

// The driver: one thread that sleeps (Monitor.Wait) until the start of the wheel's next occupied slot or until
// a pushed change must be reconciled, whichever is first; then it reconciles the pending changes, fires what is
// due, and sleeps again. Nothing due and nothing pushed → no wake-ups at all, so an idle wheel costs no CPU
// however many timers it holds. A push that needs the driver earlier than planned pulses it (TimerWheel.Pending.cs).
public sealed partial class TimerWheel
{
    // _plannedWake while the driver is awake: below every request, so no one pulses (the driver re-reads _drainBy
    // before it sleeps).
    private const long DriverAwake = long.MinValue;

    private readonly Thread? _driver;
    private readonly ExpiredTimers _driverBatch = new();

    // When the sleeping driver will wake (a timestamp), long.MaxValue for "only when pulsed", DriverAwake while awake.
    private long _plannedWake = DriverAwake;
    private long _driverWakeups;

    /// <summary>The driver thread, or null for a wheel created without one (hosted, or a test's). For tests.</summary>
    internal Thread? DriverThread => _driver;

    /// <summary>How many times the driver woke up (timeouts and pulses). For idle-CPU tests.</summary>
    internal long DriverWakeups => Interlocked.Read(ref _driverWakeups);

    /// <summary>
    /// Reconciles every pending change and fires every timer due by the clock's current time, on the calling
    /// thread (what the driver does after each wake-up). The test seam for wheels created without a driver.
    /// </summary>
    /// <param name="reconcilePending">
    /// False fires what the wheel holds without reconciling pushed changes first: what the driver does when it
    /// wakes for an expiry before the reconcile deadline of a change pushed meanwhile.
    /// </param>
    internal void RunDueTimers(bool reconcilePending = true)
    {
        var batch = new ExpiredTimers();
        lock (_lock)
        {
            if (_disposed)
            {
                return;
            }

            long now = _clock.GetTimestamp();
            if (reconcilePending)
            {
                now = DrainPendingLocked(now);
            }

            CollectDueLocked(now, batch);
        }

        FireBatch(batch);
    }

    /// <summary>When the driver would next wake up for the wheel (the start of the earliest occupied slot), after reconciling pending changes. For tests.</summary>
    internal bool TryGetNextWakeTimestamp(out long timestamp)
    {
        lock (_lock)
        {
            if (!_disposed)
            {
                DrainPendingLocked(_clock.GetTimestamp());
            }

            bool any = TryGetNextExpirationLocked(out long tick);
            timestamp = any ? StartOfTick(tick) : 0;
            return any;
        }
    }

    /// <summary>Wakes a sleeping driver that planned to wake after <paramref name="dueTick"/> starts. Caller holds the lock.</summary>
    private void WakeDriverIfEarlierLocked(long dueTick)
    {
        if (StartOfTick(dueTick) < _plannedWake)
        {
            WakeSleeper();
        }
    }

    /// <summary>
    /// Wakes whoever sleeps on the published plan: a host through its own wake-up (<see cref="WakeHost"/>), the driver
    /// thread with a pulse. The pulse is taken under the lock, which the driver holds from publishing its plan until
    /// Monitor.Wait releases it, so it cannot fall between the driver's last look and its wait.
    /// </summary>
    private void WakeSleeper()
    {
        if (_wakeHost is not null)
        {
            WakeHost();
            return;
        }

        lock (_lock)
        {
            _plannedWake = DriverAwake;
            Monitor.Pulse(_lock);
        }
    }

    private void DriverLoop()
    {
        // Completions reach a captured SynchronizationContext or foreign TaskScheduler through the ThreadPool from here:
        // their Post or QueueTask is user code (it may run the continuation inline, or block every timer behind it).
        WakerDispatch.MarkCurrentThreadRunsNoUserCode();
        DefaultExecutionContext.LearnOnFreshThread();
        ExpiredTimers batch = _driverBatch;
        Monitor.Enter(_lock);
        try
        {
            while (!_disposed)
            {
                long plan = AdvanceLocked(batch, out long now);
                if (_disposed)
                {
                    break;
                }

                Monitor.Wait(_lock, plan == long.MaxValue ? Timeout.Infinite : MillisecondsUntil(now, plan));
                _plannedWake = DriverAwake;
                _driverWakeups++;
            }
        }
        finally
        {
            Monitor.Exit(_lock);
        }
    }

    /// <summary>
    /// One wake-up's work, for the driver thread and for a host (<see cref="RunHostedDriverStep"/>): reconciles the
    /// pending changes when one asked for it, fires everything due, and publishes when to wake next. Returns that
    /// time (always after <paramref name="now"/>, or <see cref="long.MaxValue"/>: only when woken), or
    /// <see cref="long.MaxValue"/> once the wheel is disposed. Caller holds the lock; it is released while firing.
    /// </summary>
    private long AdvanceLocked(ExpiredTimers batch, out long now)
    {
        while (true)
        {
            now = _clock.GetTimestamp();
            if (now >= Volatile.Read(ref _drainBy))
            {
                now = DrainPendingLocked(now);
            }

            CollectDueLocked(now, batch);
            if (!batch.IsEmpty)
            {
                // Fire outside the lock: completing a waker enqueues to a worker and may unpark it, which
                // must not hold up a thread that needs the lock to wake us or to dispose.
                Monitor.Exit(_lock);
                try
                {
                    FireBatch(batch);
                }
                finally
                {
                    Monitor.Enter(_lock);
                }

                if (_disposed)
                {
                    return long.MaxValue;
                }

                continue;
            }

            long wake = TryGetNextExpirationLocked(out long nextTick) ? StartOfTick(nextTick) : long.MaxValue;
            long plan = PublishPlanLocked(wake);
            now = _clock.GetTimestamp();
            if (plan > now)
            {
                return plan;
            }

            _plannedWake = DriverAwake;
        }
    }

    /// <summary>
    /// Publishes when the driver will wake: at <paramref name="wheelWake"/> or at the earliest reconciliation
    /// request, whichever is first. Caller holds the lock and waits right after.
    /// </summary>
    private long PublishPlanLocked(long wheelWake)
    {
        while (true)
        {
            long request = Volatile.Read(ref _drainBy);
            long plan = Math.Min(wheelWake, request);
            Volatile.Write(ref _plannedWake, plan);

            // Dekker with LowerDrainBy: a request made before this fence is seen by the re-read below; one made
            // after it sees the plan and pulses (under the lock, so only once we wait).
            Interlocked.MemoryBarrier();
            if (Volatile.Read(ref _drainBy) == request)
            {
                return plan;
            }
        }
    }

    /// <summary>Advances the wheel to <paramref name="now"/> and collects what is due, each with its fire token. Caller holds the lock.</summary>
    private void CollectDueLocked(long now, ExpiredTimers batch)
    {
        _wheel.Advance(TickOf(now), batch);
        int i = 0;
        while (i < batch.Count)
        {
            TimerEntry entry = batch[i];
            if (entry.DeadlineTimestamp > now)
            {
                // Unreachable while the clock is monotonic (a due tick starts at or after the deadline and the
                // current tick started at or before now), and kept as the last line of the never-early promise.
                _wheel.Insert(entry, DueTickOf(entry.DeadlineTimestamp));
                batch.RemoveAt(i);
                continue;
            }

            batch.SetToken(i, entry.OnExpired(this, now));
            i++;
        }

        // Delays carry no deadline of their own to re-check: a slot is due at the start of its due tick, which is
        // at or after its deadline, and the tick being processed started at or before now.
        _delayWheel.Advance(TickOf(now), batch);
        TakeDelaysIntoBatchLocked(batch);
    }

    /// <summary>The earliest tick at which either wheel (timers or delays) has work. Caller holds the lock.</summary>
    private bool TryGetNextExpirationLocked(out long tick)
    {
        bool timers = _wheel.TryGetNextExpiration(out long timerTick);
        bool delays = _delayWheel.TryGetNextExpiration(out long delayTick);
        tick = !delays ? timerTick : !timers ? delayTick : Math.Min(timerTick, delayTick);
        return timers || delays;
    }

    [SuppressMessage("Design", "CA1031:Do not catch general exception types", Justification = "The driver must survive; the exception is re-raised as unhandled on the ThreadPool, as a BCL timer would.")]
    private void FireBatch(ExpiredTimers batch)
    {
        CompleteDelays(batch, outcome: 0);
        for (int i = 0; i < batch.Count; i++)
        {
            try
            {
                batch[i].Fire(batch.GetToken(i));
            }
            catch (Exception exception)
            {
                Unhandled.Raise(exception);
            }
        }

        batch.Clear();
    }
}
