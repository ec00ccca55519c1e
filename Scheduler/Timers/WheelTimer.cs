namespace Scheduler.Timers;

/// <summary>
/// The <see cref="ITimer"/> that <see cref="TimerWheel.CreateTimer"/> returns: a wheel entry whose expiry queues
/// the timer itself to the .NET ThreadPool (no allocation per tick), where the callback runs in the
/// <see cref="ExecutionContext"/> captured at creation, as with <see cref="System.Threading.Timer"/>.
/// </summary>
/// <remarks>
/// Like <see cref="System.Threading.Timer"/>: a periodic timer's next due time is measured from the moment it
/// fired (callbacks may overlap if one outlasts the period); a period of zero or
/// <see cref="Timeout.InfiniteTimeSpan"/> means one-shot; an exception escaping the callback is unhandled on
/// the ThreadPool thread (the wheel keeps running). A callback already queued when <see cref="Change"/> or
/// <see cref="Dispose"/> is called may still run once.
/// </remarks>
internal sealed class WheelTimer : TimerEntry, ITimer, IThreadPoolWorkItem
{
    private static readonly ContextCallback s_invokeInContext = static state =>
    {
        var timer = (WheelTimer)state!;
        timer._callback(timer._state);
    };

    private readonly TimerWheel _wheel;
    private readonly TimerCallback _callback;
    private readonly object? _state;
    private readonly ExecutionContext? _context;

    // Guarded by the wheel lock. 0 means one-shot.
    private long _periodUnits;

    // Bumped (under the wheel lock) by Change and Dispose; an expiry collected before the bump carries the old
    // value and is dropped, so a rescheduled timer does not also fire on its old schedule.
    private long _generation;
    private volatile bool _disposed;

    internal WheelTimer(TimerWheel wheel, TimerCallback callback, object? state)
    {
        _wheel = wheel;
        _callback = callback;
        _state = state;
        _context = ExecutionContext.Capture();
    }

    /// <inheritdoc />
    public bool Change(TimeSpan dueTime, TimeSpan period)
    {
        TimerWheel.ValidateTimerArgument(dueTime, nameof(dueTime));
        TimerWheel.ValidateTimerArgument(period, nameof(period));

        bool fireNow = false;
        lock (_wheel.SyncRoot)
        {
            if (_disposed)
            {
                return false;
            }

            if (_wheel.IsDisposed)
            {
                TimerWheel.ThrowDisposed();
            }

            _wheel.RemoveLocked(this);
            Volatile.Write(ref _generation, _generation + 1);
            _periodUnits = period == Timeout.InfiniteTimeSpan || period == TimeSpan.Zero ? 0 : Math.Max(1, _wheel.ToTimestampUnits(period));
            if (dueTime != Timeout.InfiniteTimeSpan)
            {
                long now = _wheel.GetTimestamp();
                if (dueTime == TimeSpan.Zero)
                {
                    fireNow = true;
                    if (_periodUnits != 0)
                    {
                        _wheel.InsertLocked(this, SaturatingAdd(now, _periodUnits), now);
                    }
                }
                else
                {
                    _wheel.InsertLocked(this, _wheel.DeadlineAfter(now, dueTime), now);
                }
            }
        }

        if (fireNow)
        {
            ThreadPool.UnsafeQueueUserWorkItem(this, preferLocal: false);
        }

        return true;
    }

    /// <inheritdoc />
    public void Dispose()
    {
        lock (_wheel.SyncRoot)
        {
            if (_disposed)
            {
                return;
            }

            _disposed = true;
            Volatile.Write(ref _generation, _generation + 1);
            _wheel.RemoveLocked(this);
        }
    }

    /// <inheritdoc />
    /// <remarks>Unlinks the timer like <see cref="Dispose"/>; it does not wait for a callback that is already running.</remarks>
    public ValueTask DisposeAsync()
    {
        Dispose();
        return default;
    }

    /// <summary>Runs the callback on the ThreadPool thread. An exception escapes, as from a <see cref="System.Threading.Timer"/> callback.</summary>
    void IThreadPoolWorkItem.Execute()
    {
        if (_disposed)
        {
            return;
        }

        if (_context is null)
        {
            _callback(_state);
        }
        else
        {
            ExecutionContext.Run(_context, s_invokeInContext, this);
        }
    }

    internal override long OnExpired(TimerWheel wheel, long nowTimestamp)
    {
        if (_periodUnits != 0)
        {
            // Measured from the firing, as System.Threading.Timer does: a late tick delays the following ones
            // instead of producing a burst of catch-up callbacks.
            wheel.InsertLocked(this, SaturatingAdd(nowTimestamp, _periodUnits), nowTimestamp);
        }

        return _generation;
    }

    internal override void Fire(long token)
    {
        if (!_disposed && token == Volatile.Read(ref _generation))
        {
            ThreadPool.UnsafeQueueUserWorkItem(this, preferLocal: false);
        }
    }

    internal override long OnRemovedByDispose() => 0;

    internal override void OnWheelDisposed(long token)
    {
        // A timer of a disposed wheel simply never fires again; Change reports the disposal.
    }

    private static long SaturatingAdd(long timestamp, long units) => units > long.MaxValue - timestamp ? long.MaxValue : timestamp + units;
}
