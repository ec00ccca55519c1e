using System.Diagnostics;

namespace Scheduler.Timers;

/// <summary>
/// One thread's timers created on one wheel and not yet reconciled: a single-producer ring that the owner thread
/// fills with plain stores and that whoever holds the wheel lock empties. It takes the place of the wheel's shared
/// pending-changes stack for <see cref="TimerWheel.CreateTimer"/>, whose push is one compare-and-swap on a line every
/// creating thread writes — about a quarter of a create+dispose pair (docs/timers.md).
/// </summary>
/// <remarks>
/// <para>
/// The owner adds: read <see cref="_head"/> for room, store the slot, publish <see cref="_tail"/> (release), then read
/// <see cref="_head"/> again to learn whether the ring was empty before this entry. Only an add to an empty ring
/// asks the driver to come within the reconcile interval (every later add is covered by that request until a drain
/// empties the ring again), so a stream of creations costs no shared write at all.
/// </para>
/// <para>
/// A consumer (the lock holder) reads <see cref="_tail"/> (acquire), reconciles the slots up to it, clears them and
/// publishes <see cref="_head"/>. The owner's "was it empty" and the consumer's "is there more" form a Dekker pair with
/// plain accesses (owner: store tail, load head; consumer: store head, load tail); both may miss on x86, leaving an
/// entry nobody asked a drain for. The driver closes that the way it closes the changes' Dekker: after a drain that
/// took entries from nurseries it issues a process-wide barrier and looks at every tail again
/// (<see cref="TimerWheel"/>.RecheckLocked). A drain on a user thread empties only its own thread's nursery, for
/// which there is no race.
/// </para>
/// </remarks>
internal sealed class TimerNursery
{
    /// <summary>
    /// Slots per ring: 2 KB of references per thread and wheel. A full ring is reconciled by its owner (if the wheel
    /// lock is free), so this is also how many creations share one lock acquisition.
    /// </summary>
    internal const int Capacity = 256;

    private const int Mask = Capacity - 1;

    // Structs around the references: storing into a TimerEntry[] would pay the array-covariance type check
    // (TimerEntry is not sealed), a tenth of a create+dispose pair in a profile.
    private readonly Slot[] _slots = new Slot[Capacity];

    // Written by the owner only (Volatile.Write), read by consumers: the number of entries ever added.
    private int _tail;

    // Written by consumers only, under the wheel lock (Volatile.Write): the number of entries ever taken.
    private int _head;

    // The wheel; null once it is disposed (Close, under the wheel lock), read by the owner without it.
    private volatile TimerWheel? _wheel;

    internal TimerNursery(TimerWheel wheel, Thread owner)
    {
        _wheel = wheel;
        Owner = owner;
    }

    /// <summary>
    /// The wheel whose timers this nursery holds; null once that wheel is disposed, so that the thread's reference to
    /// its nursery no longer keeps the wheel alive (and the owner's next creation, on any wheel, binds a new one).
    /// </summary>
    internal TimerWheel? Wheel => _wheel;

    /// <summary>The only thread that adds to this nursery.</summary>
    internal Thread Owner { get; }

    /// <summary>True once the wheel has been disposed: the owner drops the nursery and binds a new one on its next creation.</summary>
    internal bool IsClosed => _wheel is null;

    /// <summary>Whether entries wait here (as far as this thread can see: a consumer's read may miss an add in flight, see the remarks).</summary>
    internal bool HasEntries => Volatile.Read(ref _tail) != Volatile.Read(ref _head);

    /// <summary>
    /// Owner only: adds <paramref name="entry"/>, already marked enqueued and with its fields written plainly (the
    /// release store of the tail publishes them). False when the ring is full. <paramref name="wasEmpty"/>: every
    /// earlier entry had been taken, so nobody has asked a drain for this one yet.
    /// </summary>
    internal bool TryAdd(TimerEntry entry, out bool wasEmpty)
    {
        Debug.Assert(Thread.CurrentThread == Owner, "Only the owner thread adds to its nursery.");
        int tail = _tail;
        if (tail - Volatile.Read(ref _head) >= Capacity)
        {
            wasEmpty = false;
            return false;
        }

        _slots[tail & Mask].Entry = entry;
        Volatile.Write(ref _tail, tail + 1);

        // Read after the tail is published (the Dekker of the remarks): a consumer that took everything before this
        // entry published its head before it looked at the tail again.
        wasEmpty = Volatile.Read(ref _head) == tail;
        return true;
    }

    /// <summary>
    /// Takes every entry published so far and reconciles it (<see cref="TimerEntry.Reconcile"/>, as for an entry popped
    /// off the pending stack). Caller holds the wheel lock. Returns how many entries it took.
    /// </summary>
    internal int DrainLocked(TimerWheel wheel, long nowTimestamp)
    {
        int head = _head;
        int tail = Volatile.Read(ref _tail);
        for (int i = head; i != tail; i++)
        {
            ref Slot slot = ref _slots[i & Mask];
            TimerEntry entry = slot.Entry!;
            slot.Entry = null;
            entry.Reconcile(wheel, nowTimestamp, popped: true);
        }

        // Only now may the owner reuse the slots.
        Volatile.Write(ref _head, tail);
        return tail - head;
    }

    /// <summary>Marks the nursery closed and lets go of the wheel (it is being disposed). Caller holds the wheel lock.</summary>
    internal void Close() => _wheel = null;

    private struct Slot
    {
        internal TimerEntry? Entry;
    }
}
