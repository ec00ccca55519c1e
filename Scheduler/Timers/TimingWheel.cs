namespace Scheduler.Timers;

/// <summary>
/// The hierarchical timing wheel of <see cref="TimerEntry"/> objects (the timers of <see cref="TimerWheel.CreateTimer"/>):
/// each slot an intrusive list of entries (see <see cref="HierarchicalWheel"/> for the geometry).
/// </summary>
internal sealed class TimingWheel : HierarchicalWheel
{
    private readonly TimerEntry?[] _slots = new TimerEntry?[ListCount];

    /// <summary>
    /// Links <paramref name="entry"/> by its <see cref="TimerEntry.DueTick"/>, or at the next tick when that has passed
    /// (an entry that computes its due tick from its deadline does not remember the clamp).
    /// </summary>
    public void Insert(TimerEntry entry)
    {
        System.Diagnostics.Debug.Assert(!entry.IsLinked, "An entry is in at most one list.");
        int index = AddToList(Math.Max(entry.DueTick, Elapsed + 1));
        TimerEntryList.AddFirst(ref _slots[index], entry, index);
    }

    /// <summary>Unlinks <paramref name="entry"/>, which must be in this wheel. O(1).</summary>
    public void Remove(TimerEntry entry)
    {
        int index = entry.Slot;
        System.Diagnostics.Debug.Assert(index >= 0 && index < _slots.Length, "The entry is in a wheel slot.");
        TimerEntryList.Remove(ref _slots[index], entry);
        RemovedFromList(index, _slots[index] is null);
    }

    /// <summary>
    /// Processes every slot whose start is at or before <paramref name="nowTick"/>, in order: due entries are
    /// unlinked and appended to <paramref name="expired"/>, the others cascade to lower levels.
    /// </summary>
    public void Advance(long nowTick, ExpiredTimers expired)
    {
        while (TryTakeNextDueList(nowTick, out int index, out long start))
        {
            TimerEntry? entry = _slots[index];
            _slots[index] = null;
            while (entry is not null)
            {
                TimerEntry? next = entry.Next;
                entry.Next = null;
                entry.Prev = null;
                entry.Slot = TimerEntry.NotLinked;
                TakenFromList();
                long dueTick = entry.DueTick;
                if (dueTick <= start)
                {
                    expired.Add(entry);
                }
                else
                {
                    int list = AddToList(dueTick);
                    TimerEntryList.AddFirst(ref _slots[list], entry, list);
                }

                entry = next;
            }
        }

        AdvancedTo(nowTick);
    }

    /// <summary>Unlinks every entry and appends it to <paramref name="removed"/> (disposal).</summary>
    public void RemoveAll(ExpiredTimers removed)
    {
        for (int index = 0; index < _slots.Length; index++)
        {
            TimerEntry? entry = _slots[index];
            _slots[index] = null;
            while (entry is not null)
            {
                TimerEntry? next = entry.Next;
                entry.Next = null;
                entry.Prev = null;
                entry.Slot = TimerEntry.NotLinked;
                removed.Add(entry);
                entry = next;
            }
        }

        Cleared();
    }
}
