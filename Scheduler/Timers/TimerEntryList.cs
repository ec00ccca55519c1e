namespace Scheduler.Timers;

/// <summary>O(1) operations on an intrusive, doubly linked, head-only list of <see cref="TimerEntry"/>.</summary>
internal static class TimerEntryList
{
    public static void AddFirst(ref TimerEntry? head, TimerEntry entry, int slot)
    {
        entry.Prev = null;
        entry.Next = head;
        if (head is not null)
        {
            head.Prev = entry;
        }

        head = entry;
        entry.Slot = (short)slot; // fewer than TimingWheel.ListCount (384) lists
    }

    public static void Remove(ref TimerEntry? head, TimerEntry entry)
    {
        if (entry.Prev is null)
        {
            head = entry.Next;
        }
        else
        {
            entry.Prev.Next = entry.Next;
        }

        if (entry.Next is not null)
        {
            entry.Next.Prev = entry.Prev;
        }

        entry.Next = null;
        entry.Prev = null;
        entry.Slot = TimerEntry.NotLinked;
    }
}
