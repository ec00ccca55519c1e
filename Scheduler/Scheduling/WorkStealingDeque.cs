using System.Diagnostics;
using System.Numerics;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace Scheduler;

/// <summary>
/// A bounded single-owner work-stealing deque (Chase–Lev with a fixed ring, as in the runtime's
/// <c>ThreadPoolWorkQueue.WorkStealingQueue</c> and tokio's local run queue).
/// </summary>
/// <remarks>
/// <para>The owner pushes and pops at the tail (LIFO); thieves take from the head (FIFO) in batches.</para>
/// <para><see cref="TryPush"/> uses no interlocked instruction: it writes the slot, then publishes the tail
/// with a release store. <see cref="TryPop"/> needs one full fence between writing the tail and reading the
/// head (a store→load ordering that no release/acquire pair provides); without it the owner and a thief can
/// both take the last element. <see cref="Interlocked.Exchange(ref long, long)"/> supplies that fence exactly
/// as the runtime's <c>LocalPop</c> does. Thieves take from the head one CAS per item (a range claimed with one CAS would race the owner's pop: see <see cref="TryStealHalf"/>).</para>
/// <para>Indices are 64-bit and only grow, so there is no ABA on the head.</para>
/// </remarks>
internal sealed class WorkStealingDeque
{
    internal const int DefaultCapacity = 256;

    private readonly WorkItem[] _slots;
    private readonly long _mask;

    // Head and tail live on separate cache lines: thieves hammer the head, the owner the tail.
    private PaddedLong _head;
    private PaddedLong _tail;

    // Owner only: every slot of an index below this holds nothing (cleared, or overwritten by a later push).
    // A thief copies the item it steals and cannot clear the slot (the owner may already be refilling it), so
    // the owner clears stolen slots itself, at its next push, empty pop or pop that lost the last item; see ReleaseStolenSlots.
    private long _releasedUpTo;

    public WorkStealingDeque(int capacity = DefaultCapacity)
    {
        if (capacity < 2 || !BitOperations.IsPow2(capacity))
        {
            throw new ArgumentOutOfRangeException(nameof(capacity), capacity, "The capacity must be a power of two of at least 2.");
        }

        _slots = new WorkItem[capacity];
        _mask = capacity - 1;
    }

    public int Capacity => _slots.Length;

    /// <summary>Approximate number of items; exact when called by the owner with no thief active.</summary>
    public int Count
    {
        get
        {
            long count = Volatile.Read(ref _tail.Value) - Volatile.Read(ref _head.Value);
            return count <= 0 ? 0 : (int)Math.Min(count, _slots.Length);
        }
    }

    public bool IsEmpty => Volatile.Read(ref _tail.Value) - Volatile.Read(ref _head.Value) <= 0;

    /// <summary>Owner only. Returns false when the ring is full (the caller spills to the global queue).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public bool TryPush(in WorkItem item)
    {
        long tail = _tail.Value; // only the owner writes the tail
        long head = Volatile.Read(ref _head.Value);
        if (tail - head >= _slots.Length)
        {
            return false;
        }

        if (_releasedUpTo < head)
        {
            ReleaseStolenSlots(head); // thieves took something since: not per push, only after a steal
        }

        _slots[tail & _mask] = item;
        Volatile.Write(ref _tail.Value, tail + 1); // publishes the slot to thieves
        return true;
    }

    /// <summary>Owner only. Takes the newest item.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public bool TryPop(out WorkItem item)
    {
        long tail = _tail.Value - 1;
        long observedHead = Volatile.Read(ref _head.Value);
        if (tail < observedHead)
        {
            if (_releasedUpTo < observedHead)
            {
                ReleaseStolenSlots(observedHead);
            }

            item = default;
            return false;
        }

        // Full fence: the thief must see the smaller tail before we read the head (Dekker).
        Interlocked.Exchange(ref _tail.Value, tail);
        long head = Volatile.Read(ref _head.Value);

        if (tail > head)
        {
            // More than one item left: no thief can reach this slot.
            item = Take(tail);
            return true;
        }

        if (tail == head)
        {
            // The last item: race the thieves for it on the head.
            if (Interlocked.CompareExchange(ref _head.Value, head + 1, head) == head)
            {
                item = Take(tail);
                Volatile.Write(ref _tail.Value, tail + 1); // head == tail + 1: empty
                return true;
            }

            Volatile.Write(ref _tail.Value, tail + 1);
            return LostLastItem(head + 1, out item);
        }

        // A thief took it between our first check and the fence.
        Volatile.Write(ref _tail.Value, tail + 1);
        return LostLastItem(head, out item);
    }

    /// <summary>
    /// Owner, after its pop lost the last item to a thief: clears that item's slot (every index below
    /// <paramref name="head"/> is consumed). Not left to the next push or empty pop: a worker whose spinning is
    /// suppressed parks right after this pop, and the slot kept the stolen item (a task, and all it reaches) alive for as
    /// long as the worker slept (DequeStolenSlotStressTests).
    /// </summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    private bool LostLastItem(long head, out WorkItem item)
    {
        if (_releasedUpTo < head)
        {
            ReleaseStolenSlots(head);
        }

        item = default;
        return false;
    }

    /// <summary>
    /// Owner only: removes <paramref name="target"/> when it is the newest item. Used before inlining a
    /// task that this worker queued a moment ago (the common fork-join case).
    /// </summary>
    public bool TryPopIfNewest(object target)
    {
        long tail = _tail.Value - 1;
        if (tail < Volatile.Read(ref _head.Value) || !ReferenceEquals(_slots[tail & _mask].Target, target))
        {
            return false;
        }

        if (!TryPop(out WorkItem item))
        {
            return false;
        }

        if (ReferenceEquals(item.Target, target))
        {
            return true;
        }

        // Not ours after all (cannot happen for the owner, but never drop work): put it back.
        bool pushed = TryPush(item);
        Debug.Assert(pushed);
        return false;
    }

    /// <summary>
    /// Any thread. Takes the oldest item and moves up to half of the rest (bounded by
    /// <paramref name="destination"/>'s free space) into <paramref name="destination"/>, which the caller owns.
    /// </summary>
    /// <remarks>
    /// The batch is a sequence of single Chase–Lev steals, one CAS each. Claiming a whole range with one CAS
    /// is not safe against the owner's fence-free-until-last-item pop: a thief can read a stale (larger) tail,
    /// claim a range, and win its CAS while the owner has already popped the range's end. Stealing is the slow
    /// path, so a CAS per item is the price of never running a task twice.
    /// </remarks>
    public bool TryStealHalf(WorkStealingDeque destination, out WorkItem first, out int moved)
    {
        moved = 0;
        int half = Count / 2;
        if (!TrySteal(out first))
        {
            return false;
        }

        int room = destination._slots.Length - destination.Count;
        int extra = Math.Min(half, room);
        for (int i = 0; i < extra && TrySteal(out WorkItem item); i++)
        {
            bool pushed = destination.TryPush(item);
            Debug.Assert(pushed, "room was checked above and only this thread pushes to destination");
            moved++;
        }

        return true;
    }

    /// <summary>
    /// Owner only: takes up to <paramref name="destination"/>.Length of the oldest items with one CAS on the head
    /// (overflow: the owner moves half its ring to the global queue). A range claim is safe here, unlike for a
    /// thief, because the only thread that pops at the tail is the caller itself. Returns the number taken; the entries of
    /// <paramref name="destination"/> past it are left empty (a pooled batch must not keep work alive).
    /// </summary>
    public int TakeOldestBatch(Span<WorkItem> destination)
    {
        while (true)
        {
            long head = Volatile.Read(ref _head.Value);
            long available = _tail.Value - head;
            if (available <= 0)
            {
                return 0;
            }

            int count = (int)Math.Min(available, destination.Length);
            for (int i = 0; i < count; i++)
            {
                destination[i] = _slots[(head + i) & _mask];
            }

            if (Interlocked.CompareExchange(ref _head.Value, head + count, head) == head)
            {
                return count;
            }

            // A thief moved the head: these copies are not ours. Left in place, those past the next attempt's count
            // (or all of them, should the ring be empty by then) stayed in the batch, beyond its end, where nothing
            // clears them: a pooled batch kept a stolen task alive (found by IdleRetentionTests' heap dump).
            destination[..count].Clear();
        }
    }

    /// <summary>Any thread. Takes the oldest item.</summary>
    public bool TrySteal(out WorkItem item)
    {
        while (true)
        {
            long head = Volatile.Read(ref _head.Value);
            // Full fence between the head and tail reads, as in Lê et al.'s C11 Chase–Lev: pairs with the
            // owner's fence in TryPop so that the two never both see the last item as theirs.
            Interlocked.MemoryBarrier();
            long tail = Volatile.Read(ref _tail.Value);
            if (tail - head <= 0)
            {
                item = default;
                return false;
            }

            item = _slots[head & _mask];
            if (Interlocked.CompareExchange(ref _head.Value, head + 1, head) == head)
            {
                return true;
            }
        }
    }

    /// <summary>Best-effort, lock-free view of the queued targets, for debuggers and diagnostics.</summary>
    public void CopyTargetsTo(List<object> destination)
    {
        long head = Volatile.Read(ref _head.Value);
        long tail = Volatile.Read(ref _tail.Value);
        for (long i = head; i < tail && i - head < _slots.Length; i++)
        {
            if (_slots[i & _mask].Target is { } target)
            {
                destination.Add(target);
            }
        }
    }

    /// <summary>Tests only: the indices of the slots that point at <paramref name="target"/> (queued, or taken and not yet cleared).</summary>
    internal IEnumerable<int> SlotsReferencingForTests(object target)
    {
        for (int i = 0; i < _slots.Length; i++)
        {
            if (ReferenceEquals(_slots[i].Target, target))
            {
                yield return i;
            }
        }
    }

    /// <summary>Tests only: how many slots of the ring still point at an item (queued, or taken and not yet cleared).</summary>
    internal int ReferencingSlotCountForTests()
    {
        int count = 0;
        foreach (WorkItem slot in _slots)
        {
            count += slot.IsEmpty ? 0 : 1;
        }

        return count;
    }

    /// <summary>
    /// Owner only: clears the slots of items that thieves took (indices below <paramref name="head"/>, a head value the
    /// owner has read), which still point at their tasks. Left alone, a stolen task, and everything its continuation
    /// reaches (a state machine, the next promise, a whole chain of them), stays reachable from this ring until the
    /// owner happens to push a ring's worth more items (a heap dump of ping_pong with Tasks showed a completed task in
    /// a stale slot rooting a chain of completed promises).
    /// </summary>
    /// <remarks>
    /// Safe without atomics. Every index below the head is consumed, and the head only grows, so a thief that still
    /// reads one of these slots fails its CAS. Only the owner writes slots, and the slot of index <c>i</c> is reused
    /// by index <c>i + capacity</c> only once the tail passes it: slots of indices below <c>tail − capacity</c> may hold
    /// live items, so the loop starts no lower. The work is amortized O(1) per stolen item.
    /// </remarks>
    [MethodImpl(MethodImplOptions.NoInlining)]
    private void ReleaseStolenSlots(long head)
    {
        long from = Math.Max(_releasedUpTo, _tail.Value - _slots.Length);
        for (long i = from; i < head; i++)
        {
            _slots[i & _mask] = default;
        }

        _releasedUpTo = head;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private WorkItem Take(long index)
    {
        ref WorkItem slot = ref _slots[index & _mask];
        WorkItem item = slot;
        slot = default; // let the GC have the task once it ran
        return item;
    }
}

/// <summary>A long alone on its cache line (128 bytes covers adjacent-line prefetching).</summary>
[StructLayout(LayoutKind.Explicit, Size = 128)]
internal struct PaddedLong
{
    [FieldOffset(64)]
    public long Value;
}
