namespace Scheduler.Timers;

/// <summary>
/// A node of the wheel: the intrusive links and the deadline of one pending timer. Everything here is
/// guarded by the owning <see cref="TimerWheel"/>'s lock; only <see cref="Fire"/> and
/// <see cref="OnWheelDisposed"/> run outside it.
/// </summary>
/// <remarks>
/// Intrusive links (rather than a <c>LinkedList&lt;T&gt;</c> of nodes) are what make insert and cancel O(1)
/// with no allocation: the entry <em>is</em> the list node and knows its slot, so unlinking needs no search.
/// </remarks>
internal abstract class TimerEntry
{
    /// <summary><see cref="Slot"/> of an entry that is in no list.</summary>
    internal const int NotLinked = -1;

    /// <summary><see cref="Slot"/> of an entry parked on the wheel's list of deadline-less (infinite) waits.</summary>
    internal const int InfiniteSlot = TimingWheel.LevelCount * TimingWheel.SlotCount;

    internal TimerEntry? Next;
    internal TimerEntry? Prev;

    /// <summary>The list the entry is on: a wheel slot (level * 64 + slot), <see cref="InfiniteSlot"/> or <see cref="NotLinked"/>.</summary>
    internal int Slot = NotLinked;

    /// <summary>The first wheel tick at whose start the deadline has passed (the deadline rounded up to a tick).</summary>
    internal long DueTick;

    /// <summary>The deadline as a <see cref="System.Diagnostics.Stopwatch"/> timestamp; the entry never fires before it.</summary>
    internal long DeadlineTimestamp;

    internal bool IsLinked => Slot != NotLinked;

    /// <summary>
    /// Called under the wheel lock when the entry has been taken off the wheel because its deadline passed.
    /// Returns the token that <see cref="Fire"/> receives (a version or generation, so a late fire of an
    /// entry that was reset or rescheduled in between is recognised as stale).
    /// </summary>
    internal abstract long OnExpired(TimerWheel wheel, long nowTimestamp);

    /// <summary>Delivers an expiry outside the lock, on the driver thread. Must never run user code inline.</summary>
    internal abstract void Fire(long token);

    /// <summary>Returns the token for <see cref="OnWheelDisposed"/>; called under the lock while the wheel is being disposed.</summary>
    internal abstract long OnRemovedByDispose();

    /// <summary>Tells a pending entry, outside the lock, that its wheel was disposed.</summary>
    internal abstract void OnWheelDisposed(long token);
}
