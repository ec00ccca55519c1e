namespace Scheduler.Timers;

/// <summary>
/// The hierarchical timing wheel of <see cref="TimerEntry"/> objects (the timers of <see cref="TimerWheel.CreateTimer"/>):
/// each slot an intrusive list of entries (see <see cref="HierarchicalWheel"/> for the geometry).
/// </summary>
internal sealed class TimingWheel : HierarchicalWheel
{
    private readonly TimerEntry?[] _slots = new TimerEntry?[ListCount];

    /// <summary>
    /// Links <paramref name="entry"/> at <paramref name="dueTick"/>, or at the next tick when that has passed, and
    /// records the tick it used as the entry's <see cref="TimerEntry.DueTick"/> (an entry that computes its due tick
    /// from its deadline ignores the record: it never needs the clamp, see <see cref="Advance"/>).
    /// </summary>
    public void Insert(TimerEntry entry, long dueTick)
    {
        System.Diagnostics.Debug.Assert(!entry.IsLinked, "An entry is in at most one list.");
        dueTick = Math.Max(dueTick, Elapsed + 1);
        entry.DueTick = dueTick;
        int index = AddToList(dueTick);
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
                // A due tick at or before the slot's start, clamped or not, means due: the clamp only ever raised a
                // passed tick to the slot being processed now.
                long dueTick = entry.DueTick;
                if (dueTick <= start)
                {
                    expired.Add(entry);
                }
                else
                {
                    Insert(entry, dueTick);
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
