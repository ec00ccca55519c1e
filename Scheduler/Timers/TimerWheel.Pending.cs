using System.Diagnostics;
using System.Runtime.CompilerServices;

namespace Scheduler.Timers;

// Arm and cancel without the wheel lock. A thread that arms, reschedules or cancels a timer writes its intent
// on the entry (one word, a plain store: TimerIntent) and pushes the entry (at most once until it is popped) onto a
// lock-free MPSC stack; the thread that holds the wheel lock (the driver) pops the whole stack and reconciles each
// entry with the wheel, and later rechecks it behind a process-wide barrier (RecheckLocked). The hot path of the
// timeout pattern is then no atomic operation per change while the entry waits on the stack, and one CAS on the
// stack head per drain (and no clock read: see "relative arms" in WheelTimer); a user thread takes the wheel lock only to wake a
// sleeping driver that would otherwise wake too late (an arm due before its planned wake-up), and with TryEnter,
// never waiting, to reconcile a full batch.
//
// When must the stack be drained? Each push names a time by which its entry has to be reconciled (_drainBy, an
// atomic minimum): an absolute arm needs its deadline; anything pushed, arm or cancel, at most 4 ms after the push,
// so that cancelled timers do not stay linked (and reachable) for their whole 30 s, and relative arms get their
// deadlines at most that late. Only the push that finds the stack empty has to ask for the 4 ms (every later push
// is covered by its earlier request), so only it reads the clock. Every ReconcileBatch pushes the pusher drains the
// stack on the spot if the lock is free (never waiting for it), which keeps a hot arm/cancel loop from piling
// entries up between reconcile deadlines. The driver drains when its clock reaches _drainBy.
public sealed partial class TimerWheel
{
    /// <summary>Every this many pushes since the last drain (counted approximately), the pusher drains the stack.</summary>
    /// <remarks>
    /// 1,024 entries (about 150 KB of cancelled timers) bound what a hot arm/cancel loop leaves reachable. Waking
    /// the driver for each batch instead cost the pushing thread a futex wake per batch and let the batch survive
    /// gen0 collections: CreateTimer+Dispose in a loop took ~60 ns at 4,096, ~65 ns at 1,024 and ~90-105 ns at 256,
    /// plus ~14 ns of driver CPU per pair. Drained inline, 256, 1,024 and 4,096 all measure ~60-63 ns with no
    /// driver CPU; 1,024 keeps the lock attempts of several pushing threads rare.
    /// </remarks>
    internal const int ReconcileBatch = 1024;

    /// <summary>
    /// A drain rechecks (behind a ~4 µs process-wide barrier) once this many reconciled entries wait for it, even on a
    /// pushing thread, so the list stays small (32 KB) whatever the burst; below it, the driver's next drain does it.
    /// </summary>
    private const int RecheckLimit = 4 * ReconcileBatch;

    /// <summary>
    /// The longest a pushed change waits for reconciliation. 4 ms: under a slow stream of arms and cancels the
    /// driver wakes at most 250 times a second for it (a sleeping driver costs nothing), and a cancelled timer stays
    /// linked for at most that long. Arms due sooner than this ask for their own deadline.
    /// </summary>
    private static readonly TimeSpan s_reconcileInterval = TimeSpan.FromMilliseconds(4);

    /// <summary>
    /// Timer arms at least this long are relative: their deadline is the reconciler's clock reading plus the delay
    /// (WheelTimer.Change), which spares the arming thread a clock read (about 22-25 ns on this Linux VM, more than a
    /// whole arm+disarm pair) and costs at most one reconcile interval of lateness: 0.4 % of a 1 s timeout, less for longer ones.
    /// </summary>
    private static readonly TimeSpan s_relativeArmThreshold = TimeSpan.FromSeconds(1);

    /// <summary>Replaces the stack head when the wheel is disposed: pushes then fail, so nothing is stranded.</summary>
    private static readonly TimerEntry s_pendingClosed = new ClosedMarker();

    private readonly long _reconcileIntervalUnits;

    // The head of the pending-changes stack (entries chained through PendingNext), or s_pendingClosed.
    private TimerEntry? _pendingHead;

    // Pushes since the last drain, counted with a plain increment next to the head (the pusher already owns that
    // cache line for its CAS): racing pushers may lose a count, which only delays a batch drain, never a deadline.
    private int _pendingPushes;

    // The earliest time a pushed change needs the driver awake to reconcile it; long.MaxValue when none.
    private long _drainBy = long.MaxValue;

    // Owned by the lock holder: the relative arms read by the reconciles of the drain under way, and the entries
    // reconciled since the last recheck (RecheckLocked) with a spare list to swap in while rechecking.
    private readonly List<(TimerEntry Entry, long Intent)> _relativeArms = [];
    private List<TimerEntry> _recheck = [];
    private List<TimerEntry> _recheckSpare = [];

    /// <summary>
    /// Whether long arms are relative (see <see cref="s_relativeArmThreshold"/>). On for the Stopwatch clock; a test
    /// wheel on a manual clock has it off, so that "arm, advance the clock, run" stays deterministic, unless the
    /// test opts in.
    /// </summary>
    internal bool RelativeArmsEnabled { get; set; }

    /// <summary>Whether a timer armed for <paramref name="dueTime"/> (positive and finite) is armed relative.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal bool ArmsRelative(TimeSpan dueTime) => RelativeArmsEnabled && dueTime >= s_relativeArmThreshold;

    /// <summary>The timestamp by which a change pushed at <paramref name="nowTimestamp"/> must be reconciled.</summary>
    private long ReconcileDeadline(long nowTimestamp) =>
        SaturatingAdd(nowTimestamp, _reconcileIntervalUnits);

    /// <summary>Asks for a drain within the reconcile interval from now, for a change with no deadline of its own.</summary>
    private void RequestReconcile() => RequestDrainBy(ReconcileDeadline(GetTimestamp()));

    /// <summary>Asks for a drain by an arm's <paramref name="deadlineTimestamp"/>, computed from <paramref name="nowTimestamp"/>, and within the reconcile interval in any case.</summary>
    private void RequestReconcileOfArm(long nowTimestamp, long deadlineTimestamp) =>
        RequestDrainBy(Math.Min(deadlineTimestamp, ReconcileDeadline(nowTimestamp)));

    /// <summary>
    /// Pushes <paramref name="entry"/>, which the caller has just marked as enqueued, for a change with no deadline
    /// of its own to meet: a cancel, a disarm, or a relative arm (whose deadline is fixed when it is reconciled).
    /// Lock-free, and it reads the clock only when the stack was empty: a push onto a non-empty stack is covered by
    /// the request of the push that found it empty, which came earlier and so asked for an earlier time.
    /// Returns false, without pushing, once the wheel is disposed.
    /// </summary>
    internal bool TryPushPending(TimerEntry entry)
    {
        if (!TryPush(entry, out bool wasEmpty))
        {
            return false;
        }

        AfterPush(wasEmpty);
        return true;
    }

    /// <summary>
    /// Pushes <paramref name="entry"/>, which the caller has just marked as enqueued, for an arm due at
    /// <paramref name="deadlineTimestamp"/> that the caller computed from <paramref name="nowTimestamp"/>: it is
    /// reconciled by its deadline, and within the reconcile interval in any case. Lock-free. Returns false, without
    /// pushing, once the wheel is disposed.
    /// </summary>
    internal bool TryPushPending(TimerEntry entry, long nowTimestamp, long deadlineTimestamp)
    {
        if (!TryPush(entry, out _))
        {
            return false;
        }

        AfterArmPush(nowTimestamp, deadlineTimestamp);
        return true;
    }

    /// <summary>
    /// After a push with no deadline of its own (a cancel, a disarm, a relative arm, an infinite wait): only a push
    /// that found its stack empty asks for a drain within the reconcile interval (every later push is covered by it).
    /// </summary>
    private void AfterPush(bool wasEmpty)
    {
        if (!TryDrainBatchInline() && wasEmpty)
        {
            RequestReconcile();
        }
    }

    /// <summary>After the push of an arm due at <paramref name="deadlineTimestamp"/>, computed from <paramref name="nowTimestamp"/>: a drain by the deadline, and within the reconcile interval in any case.</summary>
    private void AfterArmPush(long nowTimestamp, long deadlineTimestamp)
    {
        if (!TryDrainBatchInline())
        {
            RequestReconcileOfArm(nowTimestamp, deadlineTimestamp);
        }
    }

    /// <summary>Every <see cref="ReconcileBatch"/> pushes (of timers or delays), drains the stacks on the spot if the lock is free; true when it did (the pushed change with the rest).</summary>
    private bool TryDrainBatchInline() => ++_pendingPushes % ReconcileBatch == 0 && TryDrainInline();

    /// <summary>The push itself. <paramref name="wasEmpty"/> tells whether the entry went onto an empty stack.</summary>
    private bool TryPush(TimerEntry entry, out bool wasEmpty)
    {
        TimerEntry? head = Volatile.Read(ref _pendingHead);
        while (true)
        {
            if (head == s_pendingClosed)
            {
                entry.PendingNext = null;
                wasEmpty = false;
                return false;
            }

            // No ABA hazard: the only removal is popping the whole stack, and an entry is on it at most once, so
            // a CAS that still sees `head` links the entry in front of the current head whatever happened in between.
            entry.PendingNext = head;
            TimerEntry? seen = Interlocked.CompareExchange(ref _pendingHead, entry, head);
            if (seen == head)
            {
                break;
            }

            head = seen;
        }

        wasEmpty = head is null;
        return true;
    }

    /// <summary>
    /// Reconciles a full batch on the pushing thread when the wheel lock is free (the driver sleeps in
    /// Monitor.Wait, which releases it). Cheaper than waking the driver: no futex wake and context switch per batch,
    /// and the entries are reconciled while still in this core's cache, so cancelled timers die young instead of
    /// surviving a gen0 collection on the stack. Never waits: when someone holds the lock (the driver at work,
    /// another pusher draining) or this thread is already draining, the batch stays for the next batch's pusher or
    /// the reconcile deadline, which bounds it anyway.
    /// </summary>
    private bool TryDrainInline()
    {
        if (Monitor.IsEntered(_lock) || !Monitor.TryEnter(_lock))
        {
            return false;
        }

        try
        {
            if (!_disposed)
            {
                // Inserting an entry due before the driver's planned wake-up pulses it (InsertLocked).
                DrainPendingLocked(_clock.GetTimestamp(), asDriver: false);
            }
        }
        finally
        {
            Monitor.Exit(_lock);
        }

        return true;
    }

    /// <summary>
    /// Makes sure the driver reconciles by <paramref name="timestamp"/>: a volatile read when an earlier request
    /// stands (the common case); otherwise lowers the request and, if the driver plans to sleep past it, wakes it.
    /// </summary>
    internal void RequestDrainBy(long timestamp)
    {
        long current = Volatile.Read(ref _drainBy);
        if (timestamp < current)
        {
            LowerDrainBy(timestamp, current);
        }
    }

    /// <summary>The timestamp by which the driver has been asked to drain (<see cref="long.MaxValue"/>: no request). For tests.</summary>
    internal long DrainRequestTimestamp => Volatile.Read(ref _drainBy);

    /// <summary>Drops the standing drain request. For tests standing in for a thread that added work without asking.</summary>
    internal void ForgetDrainRequest() => Volatile.Write(ref _drainBy, long.MaxValue);

    private void LowerDrainBy(long timestamp, long current)
    {
        while (true)
        {
            long seen = Interlocked.CompareExchange(ref _drainBy, timestamp, current);
            if (seen == current)
            {
                break;
            }

            if (timestamp >= seen)
            {
                return;
            }

            current = seen;
        }

        // The CAS above is a full fence, and the driver publishes its plan and then re-reads _drainBy behind a full
        // fence before it sleeps (Dekker): either it sees our request, or we see its plan and wake it.
        if (timestamp < Volatile.Read(ref _plannedWake))
        {
            WakeSleeper();
        }
    }

    /// <summary>
    /// Pops every pending change (timers and delays) and every new timer waiting in a nursery, and reconciles them with
    /// the wheel. Caller holds the lock (the driver, a pusher draining a full batch, or a test or diagnostic standing in
    /// for the driver). Returns the time the changes were reconciled at: <paramref name="now"/> when there were none,
    /// else a clock reading taken after the pop. <paramref name="asDriver"/>: the driver (or a test or diagnostic standing
    /// in for it) resets the drain request, takes every nursery and pays for a process-wide barrier (~4 µs) to recheck
    /// the entries reconciled lately (see <see cref="RecheckLocked"/>); a pusher draining inline leaves the request
    /// and the recheck to the driver, and of the nurseries it takes only its own thread's.
    /// </summary>
    private long DrainPendingLocked(long now, bool asDriver = true)
    {
        Debug.Assert(Monitor.IsEntered(_lock), "Caller holds the wheel lock.");

        // The driver resets the request before popping: a push that lands after the pop then sees the reset and asks
        // again. A pusher draining inline leaves it: it takes only its own nursery, and a request made for another
        // thread's must stand.
        if (asDriver)
        {
            Interlocked.Exchange(ref _drainBy, long.MaxValue);
        }

        TimerEntry? entry = Interlocked.Exchange(ref _pendingHead, null);
        int delays = _delays.TakePending();
        Volatile.Write(ref _pendingPushes, 0);
        Debug.Assert(entry != s_pendingClosed, "Only Dispose closes the stack, under the lock, and then nothing drains again.");
        if (entry is not null || delays >= 0)
        {
            // A reading the caller took before the pop may precede a change we just popped (the exchange is a full fence).
            now = ReconcilePoppedLocked(entry, _clock.GetTimestamp());
            ReconcileDelaysLocked(delays, now);
        }

        bool fromNurseries = asDriver ? DrainNurseriesLocked(ref now) : DrainOwnNurseryLocked(ref now);
        if (fromNurseries)
        {
            now = LinkRelativeArmsLocked(now);
        }

        if (asDriver && (_recheck.Count > 0 || fromNurseries))
        {
            now = RecheckLocked(now, nurseries: fromNurseries);
        }

        if (_recheck.Count > 0)
        {
            RequestDrainBy(ReconcileDeadline(now));
        }

        return now;
    }

    /// <summary>
    /// Reconciles a popped chain of entries, in chunks of <see cref="ReconcileBatch"/>: each chunk's relative arms are
    /// linked after it (one clock read per chunk), and a recheck list grown past <see cref="RecheckLimit"/> is rechecked
    /// on the spot (even by a pusher: one barrier per thousands of entries), so neither list grows with a burst.
    /// Returns the latest clock reading.
    /// </summary>
    private long ReconcilePoppedLocked(TimerEntry? entry, long now)
    {
        while (entry is not null)
        {
            for (int i = 0; i < ReconcileBatch && entry is not null; i++)
            {
                // Read and clear the link before Reconcile: once it has cleared the entry's Enqueued bit, its owner
                // may push it again and rewrite PendingNext.
                TimerEntry? next = entry.PendingNext;
                entry.PendingNext = null;
                entry.Reconcile(this, now, popped: true);
                entry = next;
            }

            now = LinkRelativeArmsLocked(now);
            if (_recheck.Count >= RecheckLimit)
            {
                now = RecheckLocked(now);
            }
        }

        return now;
    }

    /// <summary>An entry's reconcile read a relative arm: linked by <see cref="LinkRelativeArmsLocked"/>, measured from a later reading.</summary>
    internal void DeferRelativeLocked(TimerEntry entry, long intent) => _relativeArms.Add((entry, intent));

    /// <summary>An entry was reconciled: the next <see cref="RecheckLocked"/> looks at it again.</summary>
    internal void AddToRecheckLocked(TimerEntry entry) => _recheck.Add(entry);

    /// <summary>
    /// Links the relative arms the reconciles of this drain read, measured from a clock reading taken after all those
    /// reads (so after every change they read: never early). Returns the reading, or <paramref name="now"/> if none.
    /// </summary>
    private long LinkRelativeArmsLocked(long now)
    {
        if (_relativeArms.Count == 0)
        {
            return now;
        }

        now = _clock.GetTimestamp();
        foreach ((TimerEntry entry, long intent) in _relativeArms)
        {
            entry.LinkRelative(this, intent, now);
        }

        _relativeArms.Clear();
        return now;
    }

    /// <summary>
    /// The other half of the changes' fence-free Dekker. A change writes its intent and then reads the entry's Enqueued
    /// bit with plain accesses, and a reconcile clears the bit and then reads the intent: on x86 the change's store may
    /// still sit in its core's store buffer when the reconcile reads, while its load already saw the bit set. Both
    /// would miss: the change would not push, and the reconcile would apply the older intent. So every entry a
    /// reconcile looked at is kept here, and after a process-wide barrier (FlushProcessWriteBuffers: every thread of
    /// the process has then made its stores visible) the lock holder looks again and reconciles whatever moved.
    /// One barrier per drain that reconciled live entries, by the driver: none on the changing threads' path.
    /// </summary>
    /// <remarks>
    /// <paramref name="nurseries"/>: this drain took entries from nurseries, so the same barrier also closes their Dekker
    /// (<see cref="RequestDrainForNurseriesLocked"/>).
    /// </remarks>
    private long RecheckLocked(long now, bool nurseries = false)
    {
        (_recheck, _recheckSpare) = (_recheckSpare, _recheck);
        Interlocked.MemoryBarrierProcessWide();
        if (nurseries)
        {
            RequestDrainForNurseriesLocked(now);
        }

        foreach (TimerEntry entry in _recheckSpare)
        {
            entry.Recheck(this, now);
        }

        _recheckSpare.Clear();
        return LinkRelativeArmsLocked(now);
    }

    /// <summary>Closes the stack for good and reconciles what it held. Caller holds the lock and is disposing the wheel.</summary>
    private void ClosePendingLocked()
    {
        Debug.Assert(Monitor.IsEntered(_lock), "Caller holds the wheel lock.");
        TimerEntry? entry = Interlocked.Exchange(ref _pendingHead, s_pendingClosed);
        int delays = _delays.ClosePending();

        // Read after the pop, as in DrainPendingLocked. Everything reconciled here is removed right after: no recheck.
        long now = CloseNurseriesLocked(ReconcilePoppedLocked(entry, _clock.GetTimestamp()));
        _recheck.Clear();
        ReconcileDelaysLocked(delays, now);
    }

    /// <summary>The closed-stack sentinel; never linked, reconciled or fired.</summary>
    private sealed class ClosedMarker : TimerEntry
    {
        internal override long DeadlineTimestamp
        {
            get => throw new UnreachableException();
            set => throw new UnreachableException();
        }

        internal override long DueTick
        {
            get => throw new UnreachableException();
            set => throw new UnreachableException();
        }

        internal override long OnExpired(TimerWheel wheel, long nowTimestamp) => throw new UnreachableException();

        internal override void Fire(long token) => throw new UnreachableException();
    }
}
