using System.Diagnostics;
using System.Diagnostics.CodeAnalysis;
using System.Runtime.ExceptionServices;

namespace Scheduler.Timers;

// The driver: one thread that sleeps (Monitor.Wait) until the start of the wheel's next occupied slot, fires
// what is due, and sleeps again. Nothing due → no wake-ups at all, so an idle wheel costs no CPU however many
// timers it holds. An insert earlier than the planned wake-up pulses the driver under the lock.
public sealed partial class TimerWheel
{
    // _plannedWakeTick while the driver is awake (it re-reads the wheel before sleeping, so no pulse is needed).
    private const long DriverAwake = long.MinValue;

    private readonly Thread? _driver;
    private readonly ExpiredTimers _driverBatch = new();
    private long _plannedWakeTick = DriverAwake;
    private long _driverWakeups;

    /// <summary>How many times the driver woke up (timeouts and pulses). For idle-CPU tests.</summary>
    internal long DriverWakeups => Interlocked.Read(ref _driverWakeups);

    /// <summary>
    /// Fires every timer due by the clock's current time, on the calling thread (what the driver does after each
    /// wake-up). The test seam for wheels created without a driver.
    /// </summary>
    internal void RunDueTimers()
    {
        var batch = new ExpiredTimers();
        lock (_lock)
        {
            if (_disposed)
            {
                return;
            }

            CollectDueLocked(_clock.GetTimestamp(), batch);
        }

        FireBatch(batch);
    }

    /// <summary>When the driver would next wake up (the start of the earliest occupied slot). For tests.</summary>
    internal bool TryGetNextWakeTimestamp(out long timestamp)
    {
        lock (_lock)
        {
            bool any = _wheel.TryGetNextExpiration(out long tick);
            timestamp = any ? StartOfTick(tick) : 0;
            return any;
        }
    }

    private void WakeDriverIfEarlierLocked(long dueTick)
    {
        if (dueTick < _plannedWakeTick)
        {
            _plannedWakeTick = DriverAwake;
            Monitor.Pulse(_lock);
        }
    }

    private void DriverLoop()
    {
        ExpiredTimers batch = _driverBatch;
        Monitor.Enter(_lock);
        try
        {
            while (!_disposed)
            {
                long now = _clock.GetTimestamp();
                CollectDueLocked(now, batch);
                if (batch.Count > 0)
                {
                    // Fire outside the lock: completing a waker enqueues to a worker and may unpark it, which
                    // must not hold up inserts and cancels on other threads.
                    Monitor.Exit(_lock);
                    try
                    {
                        FireBatch(batch);
                    }
                    finally
                    {
                        Monitor.Enter(_lock);
                    }

                    continue;
                }

                int timeout = Timeout.Infinite;
                _plannedWakeTick = long.MaxValue;
                if (_wheel.TryGetNextExpiration(out long nextTick))
                {
                    _plannedWakeTick = nextTick;
                    timeout = MillisecondsUntil(now, StartOfTick(nextTick));
                }

                Monitor.Wait(_lock, timeout);
                _plannedWakeTick = DriverAwake;
                _driverWakeups++;
            }
        }
        finally
        {
            Monitor.Exit(_lock);
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
                entry.DueTick = Math.Max(DueTickOf(entry.DeadlineTimestamp), _wheel.Elapsed + 1);
                _wheel.Insert(entry);
                batch.RemoveAt(i);
                continue;
            }

            batch.SetToken(i, entry.OnExpired(this, now));
            i++;
        }
    }

    [SuppressMessage("Design", "CA1031:Do not catch general exception types", Justification = "The driver must survive; the exception is re-raised as unhandled on the ThreadPool, as a BCL timer would.")]
    private static void FireBatch(ExpiredTimers batch)
    {
        for (int i = 0; i < batch.Count; i++)
        {
            try
            {
                batch[i].Fire(batch.GetToken(i));
            }
            catch (Exception exception)
            {
                ReportUnhandled(exception);
            }
        }

        batch.Clear();
    }

    /// <summary>
    /// Raises <paramref name="exception"/> as an unhandled exception on a ThreadPool thread: what an exception
    /// escaping a <see cref="System.Threading.Timer"/> callback does (by default it terminates the process; a
    /// handler set with <c>ExceptionHandling.SetUnhandledExceptionHandler</c> sees it first). The wheel itself
    /// keeps running.
    /// </summary>
    internal static void ReportUnhandled(Exception exception)
    {
        ExceptionDispatchInfo info = ExceptionDispatchInfo.Capture(exception);
        ThreadPool.UnsafeQueueUserWorkItem(static state => state.Throw(), info, preferLocal: false);
    }
}
