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
/// the ThreadPool thread (the wheel keeps running). A callback already queued when <see cref="Change(TimeSpan, TimeSpan)"/> is called
/// may still run once; after <see cref="Dispose"/> no callback starts, and <see cref="DisposeAsync"/> also waits for
/// one that is running.
/// </remarks>
internal sealed class WheelTimer : TimerEntry, ITimer, IThreadPoolWorkItem
{
    private static readonly ContextCallback s_invokeInContext = static state =>
    {
        var timer = (WheelTimer)state!;
        timer._callback(timer._state);
    };

    // Flags bits. Locked is a tiny spin lock that serialises the writers of the intent below (Change and Dispose
    // on any thread) with the lock holder's Reconcile; Enqueued means "on the wheel's pending stack, or about to be".
    private const int Locked = 1;
    private const int Enqueued = 2;
    private const int Disposed = 4;

    // Set with an arm whose _dueTimestamp holds the delay (Stopwatch units) rather than the deadline: the
    // reconciler measures it from its own clock reading (see Change).
    private const int RelativeDue = 8;

    // _dueTimestamp of a disarmed timer.
    private const long NotArmed = long.MinValue;

    private readonly TimerWheel _wheel;
    private readonly TimerCallback _callback;
    private readonly object? _state;
    private readonly ExecutionContext? _context;

    // Callbacks of this timer running now, and what DisposeAsync awaits until that count drops to zero (created only
    // by a DisposeAsync that finds a callback running).
    private int _runningCallbacks;
    private TaskCompletionSource? _callbacksDone;


    // The intent, written under the Locked bit: bumped by every Change and Dispose (also read without the bit by
    // Fire, so an expiry of an older schedule is dropped once the call that replaced it has returned; 32 bits
    // because a stale expiry could only match again after exactly 2^32 changes while it is in flight) ...
    private int _generation;

    // ... the deadline to arm for (a Stopwatch timestamp, or NotArmed; the delay when RelativeDue is set) and the
    // period (0: one-shot).
    private long _dueTimestamp = NotArmed;
    private long _periodUnits;

    // The generation the entry is linked for, owned by the wheel-lock holder: its expiries carry it as their token.
    private int _linkedGeneration;

    internal WheelTimer(TimerWheel wheel, TimerCallback callback, object? state)
    {
        _wheel = wheel;
        _callback = callback;
        _state = state;
        _context = ExecutionContext.Capture();
    }

    /// <inheritdoc />
    public bool Change(TimeSpan dueTime, TimeSpan period) => Change(dueTime, period, published: true);

    /// <summary>
    /// <see cref="Change(TimeSpan, TimeSpan)"/>, and for the first arm by <see cref="TimerWheel.CreateTimer"/>
    /// (<paramref name="published"/> false: no other thread can see the timer yet, and CreateTimer has validated the
    /// arguments before allocating) without taking the Locked bit or validating again.
    /// </summary>
    internal bool Change(TimeSpan dueTime, TimeSpan period, bool published)
    {
        if (published)
        {
            TimerWheel.ValidateTimerArgument(dueTime, nameof(dueTime));
            TimerWheel.ValidateTimerArgument(period, nameof(period));
        }

        long periodUnits = period == Timeout.InfiniteTimeSpan || period == TimeSpan.Zero ? 0 : Math.Max(1, _wheel.ToTimestampUnits(period));
        bool fireNow = dueTime == TimeSpan.Zero;
        bool armed = dueTime != Timeout.InfiniteTimeSpan;
        bool relative = armed && _wheel.ArmsRelative(dueTime);
        long now = 0;
        long due = NotArmed;
        if (relative)
        {
            // A long timeout: no clock read here (it would be most of the cost of an arm). The reconciler adds its
            // own reading, taken after it popped this change, so the timer is never early and at most one reconcile
            // interval late.
            due = _wheel.ToTimestampUnits(dueTime);
        }
        else if (armed)
        {
            // Read before publishing: the deadline is measured from the call, and the clock read stays outside
            // the entry's critical section.
            now = _wheel.GetTimestamp();
            if (!fireNow)
            {
                due = _wheel.DeadlineAfter(now, dueTime);
            }
            else if (periodUnits != 0)
            {
                due = TimerWheel.SaturatingAdd(now, periodUnits);
            }
        }

        int flags = published ? Acquire() : Volatile.Read(ref Flags);
        if ((flags & Disposed) != 0)
        {
            Release(flags);
            return false;
        }

        if (_wheel.IsDisposed)
        {
            Release(flags);
            TimerWheel.ThrowDisposed();
        }

        Volatile.Write(ref _generation, _generation + 1);
        _dueTimestamp = due;
        _periodUnits = periodUnits;
        int intent = (flags & ~RelativeDue) | Enqueued | (relative ? RelativeDue : 0);
        if (published)
        {
            Release(intent);
        }
        else
        {
            Flags = intent; // published by the push below (an interlocked operation)
        }

        if ((flags & Enqueued) == 0)
        {
            bool pushed = due == NotArmed || relative ? _wheel.TryPushPending(this) : _wheel.TryPushPending(this, now, due);
            if (!pushed)
            {
                TimerWheel.ThrowDisposed();
            }
        }
        else if (due != NotArmed && !relative)
        {
            // Already waiting to be reconciled, under a request made at its push; this arm may need it sooner.
            _wheel.RequestDrainBy(due);
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
        int flags = Acquire();
        if ((flags & Disposed) != 0)
        {
            Release(flags);
            return;
        }

        Volatile.Write(ref _generation, _generation + 1);
        _dueTimestamp = NotArmed;
        Release(flags | Disposed | Enqueued);

        // A disposed wheel unlinked everything already; otherwise the driver unlinks it within the reconcile bound.
        if ((flags & Enqueued) == 0)
        {
            _wheel.TryPushPending(this);
        }
    }

    /// <inheritdoc />
    /// <remarks>
    /// Unlinks the timer like <see cref="Dispose"/>, and completes once no callback of this timer is running any more
    /// (as <see cref="System.Threading.Timer.DisposeAsync"/> does). Awaiting it from inside the timer's own callback
    /// would wait for itself.
    /// </remarks>
    public ValueTask DisposeAsync()
    {
        Dispose();

        // Dekker with Execute: we publish Disposed (above) and then read the running count; a callback counts itself
        // in and then reads Disposed. Either we see it running, or it sees the flag and does not run.
        Interlocked.MemoryBarrier();
        if (Volatile.Read(ref _runningCallbacks) == 0)
        {
            return default;
        }

        var idle = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        TaskCompletionSource waiter = Interlocked.CompareExchange(ref _callbacksDone, idle, null) ?? idle;
        if (Volatile.Read(ref _runningCallbacks) == 0)
        {
            waiter.TrySetResult();
        }

        return new ValueTask(waiter.Task);
    }

    /// <summary>Runs the callback on the ThreadPool thread. An exception escapes, as from a <see cref="System.Threading.Timer"/> callback.</summary>
    void IThreadPoolWorkItem.Execute()
    {
        Interlocked.Increment(ref _runningCallbacks);
        try
        {
            if ((Volatile.Read(ref Flags) & Disposed) != 0)
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
        finally
        {
            if (Interlocked.Decrement(ref _runningCallbacks) == 0)
            {
                Volatile.Read(ref _callbacksDone)?.TrySetResult();
            }
        }
    }

    internal override bool Reconcile(TimerWheel wheel, long nowTimestamp)
    {
        int flags = Volatile.Read(ref Flags);
        if ((flags & Disposed) != 0)
        {
            // Final: no call re-arms or pushes a disposed timer (Change and Dispose return once they see the bit, and
            // their critical sections write back only what they read), so there is no intent to read under the
            // Locked bit and nobody needs Enqueued cleared. Unlink it if it was armed. No atomic operation: in the
            // timeout pattern (create, dispose) this is every reconcile, one per pair.
            wheel.RemoveLocked(this);
            return true;
        }

        if ((flags & Locked) != 0 || Interlocked.CompareExchange(ref Flags, flags | Locked, flags) != flags)
        {
            return false;
        }

        int generation = _generation;
        long due = _dueTimestamp;

        // Clearing Enqueued inside the critical section: a writer that comes after us sees it clear and pushes
        // again, one that came before has its intent in what we just read. No change can fall in between.
        Volatile.Write(ref Flags, flags & ~Enqueued);

        wheel.RemoveLocked(this);
        if ((flags & Disposed) == 0 && due != NotArmed)
        {
            // nowTimestamp follows the Change that wrote a relative delay (see TimerEntry.Reconcile).
            _linkedGeneration = generation;
            wheel.InsertLocked(this, (flags & RelativeDue) != 0 ? TimerWheel.SaturatingAdd(nowTimestamp, due) : due, nowTimestamp);
        }

        return true;
    }

    internal override long OnExpired(TimerWheel wheel, long nowTimestamp)
    {
        // Re-arm only the schedule that is still current. The period is read under the Locked bit; if a writer
        // holds it, or the generation moved, a Change or Dispose is under way and will push the entry: its
        // reconciliation decides what comes next.
        int flags = Volatile.Read(ref Flags);
        if ((flags & Locked) == 0 && Interlocked.CompareExchange(ref Flags, flags | Locked, flags) == flags)
        {
            long periodUnits = _generation == _linkedGeneration ? _periodUnits : 0;
            Release(flags);
            if (periodUnits != 0)
            {
                // Measured from the firing, as System.Threading.Timer does: a late tick delays the following ones
                // instead of producing a burst of catch-up callbacks.
                wheel.InsertLocked(this, TimerWheel.SaturatingAdd(nowTimestamp, periodUnits), nowTimestamp);
            }
        }

        return _linkedGeneration;
    }

    internal override void Fire(long token)
    {
        if (token == Volatile.Read(ref _generation))
        {
            ThreadPool.UnsafeQueueUserWorkItem(this, preferLocal: false);
        }
    }

    internal override long OnRemovedByDispose() => 0;

    internal override void OnWheelDisposed(long token)
    {
        // A timer of a disposed wheel simply never fires again; Change reports the disposal.
    }

    /// <summary>Takes the Locked bit (spinning: the holder runs a few stores) and returns the other flags.</summary>
    private int Acquire()
    {
        int flags = Volatile.Read(ref Flags);
        while (true)
        {
            if ((flags & Locked) == 0)
            {
                int seen = Interlocked.CompareExchange(ref Flags, flags | Locked, flags);
                if (seen == flags)
                {
                    return flags;
                }

                flags = seen;
                continue;
            }

            var spinner = default(SpinWait);
            do
            {
                spinner.SpinOnce();
                flags = Volatile.Read(ref Flags);
            }
            while ((flags & Locked) != 0);
        }
    }

    /// <summary>Publishes <paramref name="flags"/> (without Locked) and, with the release store, the intent written under it.</summary>
    private void Release(int flags) => Volatile.Write(ref Flags, flags);
}
