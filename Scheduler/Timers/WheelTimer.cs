using System.Diagnostics;
using System.Runtime.CompilerServices;

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
/// may still run once (a tick that comes due while the last callback still waits for a ThreadPool thread merges into it,
/// so a starved ThreadPool delays the timer instead of queueing a burst); after <see cref="Dispose"/> no callback starts, and <see cref="DisposeAsync"/> also waits for
/// one that is running.
/// </remarks>
internal sealed class WheelTimer : TimerEntry, ITimer, IThreadPoolWorkItem
{
    private static readonly ContextCallback s_invokeInContext = static state =>
    {
        var timer = (WheelTimer)state!;
        timer._callback(timer._state);
    };

    // Flags (TimerEntry.Flags) holds only this bit: "on the wheel's pending stack, or about to be". Set by the one
    // writer that wins a CAS from 0 (it then pushes the entry), cleared with a plain store by the lock holder that
    // popped the entry (no one else writes it while it is set).
    private const byte Enqueued = 1;

    // Every field counts: the timeout pattern allocates a timer per request (docs/timers.md), so this class holds 96
    // bytes with its header: what only periodic timers and DisposeAsync need lives in an Extras object that shares a
    // field with the captured context, the deadline and the due tick of a linked timer are computed from
    // _appliedIntent, and the two small fields below share a word with TimerEntry.Slot and TimerEntry.Flags.
    private readonly TimerWheel _wheel;
    private readonly TimerCallback _callback;
    private readonly object? _state;

    // The ExecutionContext captured at creation (null when the creator had suppressed its flow, or was in the default
    // context, which a ThreadPool work item starts in anyway: DefaultExecutionContext) or, once a periodic arm or a DisposeAsync
    // that finds a callback running needs them, an Extras that holds that same context with the period and the
    // DisposeAsync waiter. One field for both: the timeout pattern never creates the extras, and a field of its own
    // cost every timer 8 bytes. Replaced only by GetOrCreateExtras (a CAS from the context it copied), never back.
    private object? _contextOrExtras;

    // 1 once Dispose has been called: final, written with a plain store (see Dispose).
    private byte _disposed;

    // Callbacks of this timer running now (DisposeAsync waits until the count drops to zero), and QueuedBit: a callback
    // queued to the ThreadPool that has not started yet. One word, so Execute counts itself in and clears the bit with the
    // one atomic operation it already made, and the timer stays 96 bytes.
    private int _runningCallbacks;

    // While a callback waits for a ThreadPool thread, a tick that comes due merges into it instead of queueing another:
    // a starved ThreadPool delays a periodic timer instead of banking a burst of its callbacks, which then ran back to back
    // once threads came, after a Change or a PeriodicTimer.Period that had lengthened the period (a PeriodicTimer changed
    // from 20 ms to an hour ticked 27 times in the next 300 ms). The BCL's timers behave the same way: their queue's
    // firing pass itself runs on the ThreadPool, so a starved pool delays it.
    private const int QueuedBit = 1 << 30;

    // The intent (TimerIntent): one word that every Change writes whole, so a reader never sees half of one.
    private long _intent;

    // The intent that the entry's place in the wheel reflects, owned by the wheel-lock holder: an expiry fires only
    // if the intent is still this word, and the recheck reconciles again any entry whose intent moved away from it.
    // While the entry is linked this is an absolute word, whose deadline is the entry's DeadlineTimestamp. An unlinked
    // entry may still hold an absolute one (a relative arm's claim and a dropped expiry unlink without clearing it), so
    // "applied" means equal and linked for an absolute word (IsAppliedLocked).
    private long _appliedIntent;

    /// <summary>
    /// True when the wheel already reflects <paramref name="intent"/> (wheel lock held). An absolute word counts only
    /// while the entry is linked: a claimed relative arm and an expiry dropped for a moved word both unlink the entry
    /// and leave the old applied word, and a missed change may write that very word again.
    /// </summary>
    private bool IsAppliedLocked(long intent) => intent == _appliedIntent && (IsLinked || !TimerIntent.IsAbsolute(intent));

    internal WheelTimer(TimerWheel wheel, TimerCallback callback, object? state)
    {
        _wheel = wheel;
        _callback = callback;
        _state = state;
        // The default context is left out (DefaultExecutionContext): null runs the callback directly, in the context
        // every ThreadPool work item starts in, which is that one.
        ExecutionContext? context = ExecutionContext.Capture();
        if (context != DefaultExecutionContext.Value)
        {
            _contextOrExtras = context;
        }
    }

    /// <inheritdoc />
    /// <remarks>
    /// The hot path of the timeout pattern (a 30 s one-shot arm, then a disarm) is plain stores and loads: the intent
    /// word, then the Enqueued bit. Only a change that finds the entry off the pending stack pushes it (two atomic
    /// operations), which happens once per reconcile of the entry, not once per change.
    /// </remarks>
    public bool Change(TimeSpan dueTime, TimeSpan period)
    {
        dueTime = TimerWheel.ValidateTimerArgument(dueTime, nameof(dueTime));
        period = TimerWheel.ValidateTimerArgument(period, nameof(period));
        long intent = ComputeIntent(dueTime, period, out long periodUnits, out long now, out long deadline);
        if ((intent & TimerIntent.Periodic) != 0)
        {
            WritePeriodic(intent, periodUnits);
        }
        else
        {
            Volatile.Write(ref _intent, intent);
        }

        // Dekker with the reconciler, which clears Enqueued and then reads the intent: we wrote the intent and now
        // read Enqueued. Without a fence here both may miss (the store may wait in this core's store buffer);
        // the reconciler closes that gap with a process-wide barrier before it rechecks (TimerWheel.RecheckLocked).
        if (Volatile.Read(ref _disposed) != 0)
        {
            return false;
        }

        if (_wheel.IsDisposed)
        {
            TimerWheel.ThrowDisposed();
        }

        if (Volatile.Read(ref Flags) == 0 && Interlocked.CompareExchange(ref Flags, Enqueued, 0) == 0)
        {
            PushOrThrow(intent, now, deadline);
        }
        else if (TimerIntent.IsAbsolute(intent))
        {
            // Already waiting to be reconciled (or just pushed by a racing Change or Dispose that won the CAS above),
            // under a request made for that push's own deadline; this arm may need the drain sooner.
            _wheel.RequestDrainBy(deadline);
        }

        FireNowIfDue(dueTime);
        return true;
    }

    /// <summary>
    /// The first arm, by <see cref="TimerWheel.CreateTimer"/> (arguments validated): no other thread can see the timer
    /// yet, so its fields are written plainly, and the nursery's release store or the push publishes them.
    /// </summary>
    /// <remarks>
    /// A method of its own rather than a branch of <see cref="Change(TimeSpan, TimeSpan)"/>, so that the JIT compiles
    /// it from the creations' own profile. In a process that changes existing timers far more often than it creates
    /// them (<c>CancelAfter</c> on long-lived sources), tiered PGO marked a shared method's creation branch rarely run,
    /// and the JIT left the nursery's thread-static read there as a helper call instead of expanding it inline: a new
    /// timer per pair cost 22–28 ns instead of 19 (docs/timers.md, "Where the row is measured matters"). For the same
    /// reason <see cref="TimerWheel.CreateTimer"/> does not call it for a timer created disarmed (a
    /// <c>CancellationTokenSource</c> made with a wheel and armed later by <c>CancelAfter</c>): a profile full of those
    /// marked the nursery branch here rarely run in turn.
    /// </remarks>
    internal void ArmNew(TimeSpan dueTime, TimeSpan period)
    {
        long intent = ComputeIntent(dueTime, period, out long periodUnits, out long now, out long deadline);
        if ((intent & TimerIntent.Periodic) != 0)
        {
            // Before the word that refers to it; no other thread can see the timer yet, so a plain store.
            _contextOrExtras = new Extras((ExecutionContext?)_contextOrExtras) { PeriodUnits = periodUnits };
        }

        _intent = intent;
        if (intent != TimerIntent.Disarmed)
        {
            // Enqueued until its first reconcile, whether it waits in this thread's nursery or on the stack.
            Flags = Enqueued;
            if (!_wheel.TryAddToNursery(this, TimerIntent.IsAbsolute(intent), now, deadline))
            {
                PushOrThrow(intent, now, deadline);
            }
        }

        FireNowIfDue(dueTime);
    }

    /// <summary>
    /// The intent word for an arm (<see cref="TimerIntent"/>), with the <see cref="TimerIntent.Periodic"/> bit for a
    /// periodic one; <paramref name="nowTimestamp"/> and <paramref name="deadlineTimestamp"/> are set for an absolute arm.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private long ComputeIntent(TimeSpan dueTime, TimeSpan period, out long periodUnits, out long nowTimestamp, out long deadlineTimestamp)
    {
        bool periodic = period != Timeout.InfiniteTimeSpan && period != TimeSpan.Zero;
        periodUnits = periodic ? Math.Max(1, _wheel.ToTimestampUnits(period)) : 0;
        bool fireNow = dueTime == TimeSpan.Zero;
        nowTimestamp = 0;
        deadlineTimestamp = 0;
        if (dueTime == Timeout.InfiniteTimeSpan || (fireNow && !periodic))
        {
            return TimerIntent.Disarmed;
        }

        long intent;
        if (!fireNow && _wheel.ArmsRelative(dueTime))
        {
            // A long timeout: no clock read here (it would be most of the cost of an arm). The reconciler measures
            // the delay from a clock reading it takes after reading this word, so the timer is never early and at
            // most about one reconcile interval late.
            intent = TimerIntent.RelativeOf(_wheel.ToTimestampUnits(dueTime));
        }
        else
        {
            // A periodic timer due now fires at once (FireNowIfDue) and then every period, measured from here.
            nowTimestamp = _wheel.GetTimestamp();
            deadlineTimestamp = fireNow ? TimerWheel.SaturatingAdd(nowTimestamp, periodUnits) : _wheel.DeadlineAfter(nowTimestamp, dueTime);
            intent = TimerIntent.AbsoluteOf(deadlineTimestamp, _wheel.OriginTimestamp);
        }

        return periodic ? intent | TimerIntent.Periodic : intent;
    }

    // The test inline (every arm passes here), the queueing out of line: as a call of its own the test cost the
    // timeout pattern a call and a return per creation (3.5 % of its profile).
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private void FireNowIfDue(TimeSpan dueTime)
    {
        if (dueTime == TimeSpan.Zero)
        {
            FireNow();
        }
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private void FireNow() => QueueCallback();

    /// <summary>
    /// Queues the callback to the ThreadPool, unless one is queued and has not started yet (that one stands for this
    /// firing too; see <see cref="QueuedBit"/>). A callback that has started does not count: callbacks may overlap.
    /// </summary>
    private void QueueCallback()
    {
        int current = Volatile.Read(ref _runningCallbacks);
        while ((current & QueuedBit) == 0)
        {
            int seen = Interlocked.CompareExchange(ref _runningCallbacks, current | QueuedBit, current);
            if (seen == current)
            {
                try
                {
                    ThreadPool.UnsafeQueueUserWorkItem(this, preferLocal: false);
                }
                catch
                {
                    // Not queued (out of memory): the next firing must not take it for a pending callback.
                    Interlocked.Add(ref _runningCallbacks, -QueuedBit);
                    throw;
                }

                return;
            }

            current = seen;
        }
    }

    private void PushOrThrow(long intent, long now, long deadline)
    {
        bool pushed = TimerIntent.IsAbsolute(intent) ? _wheel.TryPushPending(this, now, deadline) : _wheel.TryPushPending(this);
        if (!pushed)
        {
            TimerWheel.ThrowDisposed();
        }
    }

    /// <summary>
    /// Writes a periodic intent: the word refers to <see cref="Extras.PeriodUnits"/>, so the two must be read together.
    /// A seqlock: writers, serialised by the wheel's PeriodicWriterLock, first replace the word with
    /// <see cref="TimerIntent.Transition"/>, then write the period, then the final word; a reader reads the word, the
    /// period and the word again and uses the pair only if the word did not move. One-shot writers need no part in it: their word does not refer to
    /// the period, and whichever final word lands last is the intent.
    /// </summary>
    private void WritePeriodic(long intent, long periodUnits)
    {
        // One lock per wheel, not a field per timer: periodic changes are rare, and every timer's size counts. The
        // extras exist before the word that refers to them is written, so a reader that sees that word finds them.
        Extras extras = GetOrCreateExtras();
        lock (_wheel.PeriodicWriterLock)
        {
            Interlocked.Exchange(ref _intent, TimerIntent.Transition);
            Volatile.Write(ref extras.PeriodUnits, periodUnits);
            Volatile.Write(ref _intent, intent);
        }
    }

    /// <inheritdoc />
    public void Dispose()
    {
        if (Volatile.Read(ref _disposed) != 0)
        {
            return;
        }

        // Final, so a plain store: no change re-arms a disposed timer (the reconciler, the expiry and the callback all
        // check this flag), and racing disposers write the same value. Then the entry must reach the reconciler, which
        // unlinks it within the reconcile interval: if it is on the pending stack already (the timeout pattern: created,
        // then disposed before the next drain) nothing more is needed, not even an atomic operation.
        Volatile.Write(ref _disposed, 1);
        if (Volatile.Read(ref Flags) == 0 && Interlocked.CompareExchange(ref Flags, Enqueued, 0) == 0)
        {
            // A disposed wheel unlinked everything already.
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
        if (RunningCount(Volatile.Read(ref _runningCallbacks)) == 0)
        {
            return default;
        }

        Extras extras = GetOrCreateExtras();
        var idle = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        TaskCompletionSource waiter = Interlocked.CompareExchange(ref extras.CallbacksDone, idle, null) ?? idle;
        if (RunningCount(Volatile.Read(ref _runningCallbacks)) == 0)
        {
            waiter.TrySetResult();
        }

        return new ValueTask(waiter.Task);
    }

    /// <summary>Runs the callback on the ThreadPool thread. An exception escapes, as from a <see cref="System.Threading.Timer"/> callback.</summary>
    void IThreadPoolWorkItem.Execute()
    {
        // Counted in, and no longer queued: a tick due from now on queues a callback of its own.
        Interlocked.Add(ref _runningCallbacks, 1 - QueuedBit);
        try
        {
            // The wheel's disposal too: a callback queued before it (by a hosted wheel's host still firing the batch it
            // had collected, which Dispose does not wait for, or by a driver Dispose joined) must not start after it.
            if (Volatile.Read(ref _disposed) != 0 || _wheel.IsDisposed)
            {
                return;
            }

            ExecutionContext? context = ContextOf(Volatile.Read(ref _contextOrExtras));
            if (context is null)
            {
                _callback(_state);
            }
            else
            {
                ExecutionContext.Run(context, s_invokeInContext, this);
            }
        }
        finally
        {
            if (RunningCount(Interlocked.Decrement(ref _runningCallbacks)) == 0 && Volatile.Read(ref _contextOrExtras) is Extras extras)
            {
                Volatile.Read(ref extras.CallbacksDone)?.TrySetResult();
            }
        }
    }

    internal override void Reconcile(TimerWheel wheel, long nowTimestamp, bool popped)
    {
        if (Volatile.Read(ref _disposed) != 0)
        {
            // Final: nothing re-arms or needs Enqueued cleared (a Dispose that finds it clear pushes the entry once
            // more, and the next reconcile lands here again). In the timeout pattern (create, dispose) this is every
            // reconcile, one per pair, and it takes no atomic operation.
            wheel.RemoveLocked(this);
            return;
        }

        if (popped)
        {
            // Only the popper writes Enqueued while it is set. Clear it before reading the intent: a change written after
            // our read then finds it clear and pushes the entry again.
            Volatile.Write(ref Flags, 0);
        }

        // A change written while we read may still have found Enqueued set (its store waiting in its core's buffer):
        // the recheck, behind a process-wide barrier, looks at this entry again.
        wheel.AddToRecheckLocked(this);
        long intent;
        while (true)
        {
            intent = Volatile.Read(ref _intent);
            if (IsAppliedLocked(intent))
            {
                return;
            }

            if (!TimerIntent.IsRelative(intent))
            {
                break;
            }

            // Linked once the wheel has read its clock after this read (LinkRelative). Claim the word first: the owner
            // may disarm and then repeat the same relative arm after that reading, and a swap from the word we read
            // would take the repeat for this arm and measure it from before it was made (early). The claimed word is
            // one no change writes, so any change after this CAS makes LinkRelative's swap fail. A change between our
            // read and the CAS makes it fail here: read the new word.
            long claimed = TimerIntent.ClaimedRelative(intent);
            if (claimed == intent || Interlocked.CompareExchange(ref _intent, claimed, intent) == intent)
            {
                wheel.RemoveLocked(this);
                wheel.DeferRelativeLocked(this, claimed);
                return;
            }
        }

        wheel.RemoveLocked(this);
        _appliedIntent = intent;
        if (TimerIntent.IsAbsolute(intent))
        {
            wheel.InsertLocked(this, TimerIntent.DeadlineOf(intent, wheel.OriginTimestamp), nowTimestamp);
        }
    }

    internal override void LinkRelative(TimerWheel wheel, long intent, long nowTimestamp)
    {
        // intent is the word Reconcile claimed (TimerIntent.ClaimedRelative), and nowTimestamp was read after that claim,
        // so after the Change that wrote the arm: measured from it the deadline cannot be early, and a Change made since
        // the claim has replaced the claimed word (the swap below then fails). The word becomes that absolute deadline,
        // so a later identical relative arm is a different word (and an expiry of this one is told apart from it).
        long delay = TimerIntent.ValueOf(intent);
        long deadline = delay == TimerIntent.MaxValue ? long.MaxValue : TimerWheel.SaturatingAdd(nowTimestamp, delay);
        long absolute = TimerIntent.AbsoluteOf(deadline, wheel.OriginTimestamp) | (intent & TimerIntent.Periodic);
        if (Interlocked.CompareExchange(ref _intent, absolute, intent) != intent)
        {
            // Changed meanwhile: that change pushed the entry (it found Enqueued clear), or the recheck will see it.
            return;
        }

        // Unlinked by the Reconcile that deferred it; a recheck that reconciled it again before it was linked claims the
        // claimed word once more and defers a duplicate, whose swap then fails (the first one made the word absolute).
        wheel.RemoveLocked(this);
        _appliedIntent = absolute;
        wheel.InsertLocked(this, deadline, nowTimestamp);
    }

    internal override void Recheck(TimerWheel wheel, long nowTimestamp)
    {
        if (Volatile.Read(ref _disposed) != 0)
        {
            wheel.RemoveLocked(this);
        }
        else if (Volatile.Read(ref Flags) == 0)
        {
            // A change the last reconcile missed and that did not push: apply it now. (Enqueued set means it is on
            // the pending stack, which the caller drains next.)
            if (!IsAppliedLocked(Volatile.Read(ref _intent)))
            {
                Reconcile(wheel, nowTimestamp, popped: false);
            }
        }
    }

    internal override long OnExpired(TimerWheel wheel, long nowTimestamp)
    {
        long intent = Volatile.Read(ref _intent);
        if (intent != _appliedIntent || Volatile.Read(ref _disposed) != 0)
        {
            // Replaced since it was linked: the change that replaced it pushed the entry or is caught by the recheck.
            return TimerIntent.NoFire;
        }

        long next;
        long nextDeadline = 0;
        bool periodic = (intent & TimerIntent.Periodic) != 0;
        if (periodic)
        {
            // The seqlock read (WritePeriodic): the period belongs to the word only if the word did not move.
            long periodUnits = Volatile.Read(ref ((Extras)Volatile.Read(ref _contextOrExtras)!).PeriodUnits);
            if (Volatile.Read(ref _intent) != intent)
            {
                return TimerIntent.NoFire;
            }

            // Measured from the firing, as System.Threading.Timer does: a late tick delays the following ones
            // instead of producing a burst of catch-up callbacks.
            nextDeadline = TimerWheel.SaturatingAdd(nowTimestamp, periodUnits);
            next = TimerIntent.AbsoluteOf(nextDeadline, wheel.OriginTimestamp) | TimerIntent.Periodic;
        }
        else
        {
            next = TimerIntent.FiredFrom(intent);
        }

        // The expiry takes the word from the intent it fired for to the next one; a Change that lands first wins.
        if (Interlocked.CompareExchange(ref _intent, next, intent) != intent)
        {
            return TimerIntent.NoFire;
        }

        _appliedIntent = next;
        if (periodic)
        {
            wheel.InsertLocked(this, nextDeadline, nowTimestamp);
        }

        return next;
    }

    internal override void Fire(long token)
    {
        // Dropped if a Change or Dispose replaced the schedule since the expiry (the BCL's timers may still run a
        // callback that races with Change; this narrows it to calls that have not returned yet).
        if (token != TimerIntent.NoFire && token == Volatile.Read(ref _intent) && Volatile.Read(ref _disposed) == 0)
        {
            QueueCallback();
        }
    }

    private static int RunningCount(int runningCallbacks) => runningCallbacks & ~QueuedBit;

    /// <inheritdoc />
    /// <remarks>Read from the applied intent, which is an absolute word whenever the entry is linked.</remarks>
    internal override long DeadlineTimestamp
    {
        get => TimerIntent.DeadlineOf(_appliedIntent, _wheel.OriginTimestamp);
        set => Debug.Assert(DeadlineTimestamp >= value, "The applied intent holds the deadline the wheel links (or a later one, past the intent's range).");
    }

    /// <inheritdoc />
    /// <remarks>
    /// Computed from the deadline, rounded up to a tick; what the wheel sets is that or a later tick (the next one, for
    /// a deadline already past), and the wheel clamps again whenever it links the entry.
    /// </remarks>
    internal override long DueTick
    {
        get => _wheel.DueTickOf(DeadlineTimestamp);
        set => Debug.Assert(
            value >= DueTick || TimerIntent.ValueOf(_appliedIntent) == TimerIntent.MaxValue,
            "The wheel links an entry at its due tick or later, never earlier (past the intent's range the computed tick is never).");
    }

    /// <summary>The context the callback runs in (null: the one a ThreadPool work item starts in). For tests.</summary>
    internal ExecutionContext? CallbackContext => ContextOf(Volatile.Read(ref _contextOrExtras));

    // The captured context is immutable and final, so a copy of it in the extras is the same context.
    private static ExecutionContext? ContextOf(object? contextOrExtras) =>
        contextOrExtras is Extras extras ? extras.Context : (ExecutionContext?)contextOrExtras;

    private Extras GetOrCreateExtras()
    {
        while (true)
        {
            object? current = Volatile.Read(ref _contextOrExtras);
            if (current is Extras existing)
            {
                return existing;
            }

            // Loses only to another thread installing extras (the field moves from the context once, never back).
            var created = new Extras((ExecutionContext?)current);
            if (Interlocked.CompareExchange(ref _contextOrExtras, created, current) == current)
            {
                return created;
            }
        }
    }

    /// <summary>What only some timers need, kept out of every timer's allocation.</summary>
    private sealed class Extras(ExecutionContext? context)
    {
        // The timer's captured context, moved here when the extras replaced it in the timer's field.
        internal readonly ExecutionContext? Context = context;

        // The period of a periodic intent (Stopwatch units), written before the word that refers to it (WritePeriodic).
        internal long PeriodUnits;

        // What DisposeAsync awaits until no callback runs any more.
        internal TaskCompletionSource? CallbacksDone;
    }
}
