using System.Diagnostics;

namespace Scheduler.Timers;

/// <summary>
/// A node of the wheel: the intrusive links and the deadline of one pending timer. The wheel links,
/// <see cref="Slot"/>, <see cref="DueTick"/> and <see cref="DeadlineTimestamp"/> of a linked entry belong to
/// whoever holds the owning <see cref="TimerWheel"/>'s lock (the driver, in production); user threads never
/// take that lock to arm or cancel: they publish their intent on the entry and push it once onto the wheel's
/// pending-changes stack (<see cref="PendingNext"/>), and the lock holder applies it in <see cref="Reconcile"/>.
/// Only <see cref="Fire"/> runs outside the lock. A wheel's disposal unlinks its entries and tells them nothing: a
/// timer of a disposed wheel never fires again, and its own calls find the wheel disposed.
/// </summary>
/// <remarks>
/// Intrusive links (rather than a <c>LinkedList&lt;T&gt;</c> of nodes) are what make insert and cancel O(1)
/// with no allocation: the entry <em>is</em> the list node and knows its slot, so unlinking needs no search.
/// </remarks>
internal abstract class TimerEntry
{
    /// <summary><see cref="Slot"/> of an entry that is in no list.</summary>
    internal const short NotLinked = -1;

    internal TimerEntry? Next;
    internal TimerEntry? Prev;

    /// <summary>
    /// The link on the wheel's lock-free pending-changes stack. Separate from <see cref="Next"/>/<see cref="Prev"/>
    /// because an entry can be linked in a slot and waiting on the stack at the same time. Written by the thread
    /// that pushes the entry (before the publishing CAS) and cleared by the lock holder that pops it.
    /// </summary>
    internal TimerEntry? PendingNext;

    /// <summary>
    /// The first wheel tick at whose start the deadline has passed (the deadline rounded up to a tick), or any earlier
    /// tick once that one has passed: the wheel links the entry at the later of this and its next tick
    /// (<see cref="TimingWheel.Insert"/>), and an entry whose slot comes with this at or before the slot's start is due.
    /// Abstract for the reason given at <see cref="DeadlineTimestamp"/>: a <see cref="WheelTimer"/> computes it from its
    /// deadline rather than spend 8 bytes of every timer on it.
    /// </summary>
    internal abstract long DueTick { get; set; }

    /// <summary>
    /// The list the entry is on: a wheel slot (level * 64 + slot, fewer than 400) or <see cref="NotLinked"/>. A short,
    /// so that it, <see cref="Flags"/> and a subclass's own byte and int share one 8-byte word: the timeout pattern
    /// allocates a timer per request, so every word of it is allocated again and again (docs/timers.md).
    /// </summary>
    internal short Slot = NotLinked;

    /// <summary>
    /// State bits owned by the concrete entry type (its ownership flags), a byte for the reason given at
    /// <see cref="Slot"/>; written with byte-wide plain stores and compare-and-swaps only.
    /// </summary>
    internal byte Flags;

    /// <summary>
    /// The deadline as a <see cref="System.Diagnostics.Stopwatch"/> timestamp; the entry never fires before it. Set by
    /// the wheel when it links the entry (<see cref="TimerWheel.InsertLocked"/>) and read when the entry's tick comes.
    /// Abstract so that an entry which already holds its deadline in another form (a <see cref="WheelTimer"/>'s applied
    /// intent) need not spend a field on it.
    /// </summary>
    internal abstract long DeadlineTimestamp { get; set; }

    internal bool IsLinked => Slot != NotLinked;

    /// <summary>
    /// Called under the wheel lock for an entry popped off the pending-changes stack (<paramref name="popped"/>), or
    /// found by <see cref="Recheck"/> with a change the wheel has not applied: reads the intent its owner published
    /// and links, moves or unlinks the entry to match. A relative arm is handed to the wheel
    /// (<see cref="TimerWheel.DeferRelativeLocked"/>), which reads its clock after every such read and then calls
    /// <see cref="LinkRelative"/>. <paramref name="nowTimestamp"/> is a recent clock reading, for the wheel's catch-up.
    /// </summary>
    internal virtual void Reconcile(TimerWheel wheel, long nowTimestamp, bool popped) => throw NotPushable();

    /// <summary>Links a relative arm read by <see cref="Reconcile"/>, measured from <paramref name="nowTimestamp"/> (read after that).</summary>
    internal virtual void LinkRelative(TimerWheel wheel, long intent, long nowTimestamp) => throw NotPushable();

    /// <summary>
    /// Called under the wheel lock, after a process-wide memory barrier, for an entry reconciled recently: a change
    /// written while it was reconciled may have missed both the reconciler and the pending stack; this applies it.
    /// </summary>
    internal virtual void Recheck(TimerWheel wheel, long nowTimestamp) => throw NotPushable();

    /// <summary>
    /// Called under the wheel lock when the entry has been taken off the wheel because its deadline passed.
    /// Returns the token that <see cref="Fire"/> receives (a version, generation or intent word, so a late fire of an
    /// entry that was reset or rescheduled in between is recognised as stale).
    /// </summary>
    internal abstract long OnExpired(TimerWheel wheel, long nowTimestamp);

    /// <summary>Delivers an expiry outside the lock, on the driver thread. Must never run user code inline.</summary>
    internal abstract void Fire(long token);

    // Reconcile, LinkRelative and Recheck serve the pending stack; an entry that is never pushed (a sentinel, a test's
    // entry scheduled directly under the lock) keeps their throwing defaults.
    private static UnreachableException NotPushable() => new("This entry is never pushed onto the pending-changes stack.");
}
