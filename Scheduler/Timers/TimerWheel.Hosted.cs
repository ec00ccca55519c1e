using System.Diagnostics;

namespace Scheduler.Timers;

// A hosted wheel has no driver thread: a thread that already waits in a loop of its own (IoReactor's epoll_wait)
// calls RunHostedDriverStep before each wait and sleeps no longer than the time it returns. Everything else — the
// pending-changes stack, the plan that tells pushers when the sleeper must be woken, the Dekker pair that closes
// the race between a push and the sleep — is the driver's protocol unchanged; only "wake the sleeper" differs: a
// Monitor.Pulse for the driver thread, the host's own wake-up (an eventfd write) here. Unlike a pulse, that wake-up
// cannot be lost before the host waits (the eventfd stays readable until the host reads it), so it needs no lock.
public sealed partial class TimerWheel
{
    // Makes the host's wait return early. Null for a wheel with its own driver thread.
    private readonly Action? _wakeHost;

    /// <summary>
    /// Creates a wheel on the <see cref="Stopwatch"/> clock without a driver thread: the host calls
    /// <see cref="RunHostedDriverStep"/> before each of its waits, and <paramref name="wakeHost"/> (callable from any
    /// thread, cheap, never blocking) makes a wait return early.
    /// </summary>
    internal TimerWheel(TimeSpan tickDuration, Action wakeHost)
        : this(tickDuration, TimerClock.System, startDriver: false)
    {
        ArgumentNullException.ThrowIfNull(wakeHost);
        _wakeHost = wakeHost;

        // The host waits without a deadline until the first change asks for one (and wakes it: every request is
        // earlier than this).
        _plannedWake = long.MaxValue;
    }

    /// <summary>True when a host thread drives the wheel instead of a driver thread of its own.</summary>
    internal bool IsHosted => _wakeHost is not null;

    /// <summary>
    /// Host thread, before each wait: reconciles pending changes that are due, fires every timer that is due, and
    /// returns the timestamp by which the host must call again (<see cref="long.MaxValue"/>: only once woken), with
    /// <paramref name="now"/> the clock reading it is measured from. When nothing is due and nobody asked for an
    /// earlier wake-up since the last call, this is one clock read and one volatile read, so a busy host can call
    /// it on every turn of its loop.
    /// </summary>
    internal long RunHostedDriverStep(out long now)
    {
        now = _clock.GetTimestamp();
        long plan = Volatile.Read(ref _plannedWake);
        if (plan != DriverAwake && now < plan)
        {
            // Still valid: an earlier request or insert since it was published would have set DriverAwake (and
            // woken the host, which is why it is calling now).
            return plan;
        }

        lock (_lock)
        {
            if (_disposed)
            {
                _plannedWake = long.MaxValue;
                return long.MaxValue;
            }

            // Awake from here until the new plan is published: changes made meanwhile need no wake-up.
            _plannedWake = DriverAwake;
            _driverWakeups++;
            return AdvanceLocked(_driverBatch, out now);
        }
    }

    /// <summary>Wakes the host once per published plan: the first caller to take the plan down sends the wake-up.</summary>
    private void WakeHost()
    {
        if (Interlocked.Exchange(ref _plannedWake, DriverAwake) != DriverAwake)
        {
            _wakeHost!();
        }
    }
}
