using System.Diagnostics;

namespace Scheduler.Timers;

/// <summary>
/// The hierarchical timing wheel of <see cref="TimerWheel.DelayAsync"/> operations: the geometry of
/// <see cref="HierarchicalWheel"/> over <see cref="DelaySlab"/> handles, each list doubly linked through the slots'
/// int fields, plus the list of infinite waits (found again only by disposal). Guarded by the wheel lock.
/// </summary>
/// <remarks>
/// A list's first slot has <c>Prev = -(list + 1)</c>, so unlinking any slot is O(1) without storing its list: only a
/// first slot needs it (to update the head), and a first slot has it.
/// </remarks>
internal sealed class DelayWheel : HierarchicalWheel
{
    /// <summary>The end of a list.</summary>
    internal const int Nil = -1;

    /// <summary><see cref="DelaySlot.Prev"/> of a slot in no list.</summary>
    internal const int NotLinked = int.MinValue;

    /// <summary>The list of infinite waits, after the wheel's own lists.</summary>
    private const int InfiniteList = ListCount;

    private readonly DelaySlab _slab;
    private readonly int[] _heads = new int[ListCount + 1];
    private int _infiniteCount;

    public DelayWheel(DelaySlab slab)
    {
        _slab = slab;
        Array.Fill(_heads, Nil);
    }

    /// <summary>The number of infinite waits linked.</summary>
    public int InfiniteCount => _infiniteCount;

    /// <summary>Links <paramref name="handle"/> by its <see cref="DelaySlot.DueTick"/>, which must be after <see cref="HierarchicalWheel.Elapsed"/>.</summary>
    public void Insert(int handle)
    {
        ref DelaySlot slot = ref _slab.Slot(handle);
        AddFirst(AddToList(slot.DueTick), handle, ref slot);
    }

    /// <summary>Links <paramref name="handle"/> on the list of infinite waits.</summary>
    public void InsertInfinite(int handle)
    {
        AddFirst(InfiniteList, handle, ref _slab.Slot(handle));
        _infiniteCount++;
    }

    /// <summary>Unlinks <paramref name="handle"/> if it is linked (on the wheel or the infinite list). O(1).</summary>
    public void RemoveIfLinked(int handle)
    {
        ref DelaySlot slot = ref _slab.Slot(handle);
        if (slot.Prev == NotLinked)
        {
            return;
        }

        int list = -1;
        if (slot.Prev < 0)
        {
            list = -slot.Prev - 1;
            _heads[list] = slot.Next;
        }
        else
        {
            _slab.Slot(slot.Prev).Next = slot.Next;
        }

        if (slot.Next != Nil)
        {
            _slab.Slot(slot.Next).Prev = slot.Prev;
        }

        bool infinite = (slot.Word & DelayWord.Infinite) != 0;
        slot.Next = Nil;
        slot.Prev = NotLinked;
        if (infinite)
        {
            _infiniteCount--;
        }
        else
        {
            // Only a first slot can empty its list, and only a first slot knows its list.
            RemovedFromList(list, list >= 0 && _heads[list] == Nil);
        }
    }

    /// <summary>
    /// Processes every list whose start is at or before <paramref name="nowTick"/>, in order: due slots are unlinked
    /// and appended to <paramref name="expired"/>, the others cascade to lower levels.
    /// </summary>
    public void Advance(long nowTick, ExpiredTimers expired)
    {
        while (TryTakeNextDueList(nowTick, out int list, out long start))
        {
            int handle = _heads[list];
            _heads[list] = Nil;
            while (handle != Nil)
            {
                int next = Detach(handle, out long dueTick);
                TakenFromList();
                if (dueTick <= start)
                {
                    expired.AddDelay(handle);
                }
                else
                {
                    Insert(handle);
                }

                handle = next;
            }
        }

        AdvancedTo(nowTick);
    }

    /// <summary>Unlinks every slot, infinite waits included, and appends it to <paramref name="removed"/> (disposal).</summary>
    public void RemoveAll(ExpiredTimers removed)
    {
        for (int list = 0; list < _heads.Length; list++)
        {
            int handle = _heads[list];
            _heads[list] = Nil;
            while (handle != Nil)
            {
                int next = Detach(handle, out _);
                removed.AddDelay(handle);
                handle = next;
            }
        }

        _infiniteCount = 0;
        Cleared();
    }

    /// <summary>Marks a slot taken off its (whole) list as unlinked; returns the slot that followed it.</summary>
    private int Detach(int handle, out long dueTick)
    {
        ref DelaySlot slot = ref _slab.Slot(handle);
        int next = slot.Next;
        slot.Next = Nil;
        slot.Prev = NotLinked;
        dueTick = slot.DueTick;
        return next;
    }

    private void AddFirst(int list, int handle, ref DelaySlot slot)
    {
        Debug.Assert(slot.Prev == NotLinked, "A slot is in at most one list.");
        int head = _heads[list];
        slot.Next = head;
        slot.Prev = -(list + 1);
        if (head != Nil)
        {
            _slab.Slot(head).Prev = handle;
        }

        _heads[list] = handle;
    }
}
