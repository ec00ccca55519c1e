using System.Diagnostics;
using System.Numerics;

namespace Scheduler.Timers;

/// <summary>
/// The hierarchical timing wheel itself: 6 levels of 64 slots, each slot an intrusive list, each level an
/// occupancy bitmask. Single-threaded (the <see cref="TimerWheel"/> lock guards it) and clock-free: it only
/// knows ticks, so it is tested deterministically.
/// </summary>
/// <remarks>
/// <para>
/// Level <c>L</c> has slots <c>64^L</c> ticks wide, so the wheel spans <c>64^6 = 2^36</c> ticks ahead of
/// <see cref="Elapsed"/> (about 2.2 years at 1 ms). An entry due at tick <c>when</c> goes to the level of the
/// highest 6-bit group in which <c>when</c> and <see cref="Elapsed"/> differ, at the slot given by that group
/// of <c>when</c> (the scheme of Tokio's timer). Consequences the code relies on:
/// </para>
/// <list type="bullet">
/// <item>Every entry of level <c>L</c> is due before every entry of level <c>L+1</c>, so the next expiry is in
/// the first non-empty level, at its first occupied slot after the current one: a rotate and a
/// trailing-zero count.</item>
/// <item>The slot holding <see cref="Elapsed"/> is empty on every level (its start has been processed), except
/// on the top level, where entries due beyond the wheel's span wrap around: there a slot at or behind the
/// current one means "one revolution later".</item>
/// <item>When a slot's start tick is reached its entries are either due (their tick is that start) or are
/// re-inserted relative to it, landing on a lower level: the cascade. An entry moves down at most five times.</item>
/// </list>
/// </remarks>
internal sealed class TimingWheel
{
    internal const int LevelCount = 6;
    internal const int SlotBits = 6;
    internal const int SlotCount = 1 << SlotBits;
    private const int SlotMask = SlotCount - 1;

    /// <summary>The farthest an entry can be placed ahead of <see cref="Elapsed"/>; later ones are re-placed when reached.</summary>
    internal const long MaxSpan = (1L << (LevelCount * SlotBits)) - 1;

    private readonly TimerEntry?[] _slots = new TimerEntry?[LevelCount * SlotCount];
    private readonly ulong[] _occupied = new ulong[LevelCount];
    private long _elapsed;
    private int _count;

    /// <summary>The last tick processed: every entry due at or before it has been expired.</summary>
    public long Elapsed => _elapsed;

    /// <summary>The number of entries in the wheel.</summary>
    public int Count => _count;

    /// <summary>Moves an empty wheel forward without processing anything (keeps new entries on low levels after a long idle).</summary>
    public void FastForward(long tick)
    {
        Debug.Assert(_count == 0, "Only an empty wheel can skip ticks.");
        if (tick > _elapsed)
        {
            _elapsed = tick;
        }
    }

    /// <summary>Links <paramref name="entry"/> by its <see cref="TimerEntry.DueTick"/>, which must be after <see cref="Elapsed"/>.</summary>
    public void Insert(TimerEntry entry)
    {
        Debug.Assert(!entry.IsLinked, "An entry is in at most one list.");
        Debug.Assert(entry.DueTick > _elapsed, "Due entries are fired, not inserted.");

        long when = entry.DueTick - _elapsed > MaxSpan ? _elapsed + MaxSpan : entry.DueTick;
        int level = LevelFor(_elapsed, when);
        int slot = (int)((ulong)when >> (level * SlotBits)) & SlotMask;
        int index = (level * SlotCount) + slot;
        TimerEntryList.AddFirst(ref _slots[index], entry, index);
        _occupied[level] |= 1UL << slot;
        _count++;
    }

    /// <summary>Unlinks <paramref name="entry"/>, which must be in this wheel. O(1).</summary>
    public void Remove(TimerEntry entry)
    {
        int index = entry.Slot;
        Debug.Assert(index >= 0 && index < _slots.Length, "The entry is in a wheel slot.");
        TimerEntryList.Remove(ref _slots[index], entry);
        if (_slots[index] is null)
        {
            _occupied[index / SlotCount] &= ~(1UL << (index & SlotMask));
        }

        _count--;
    }

    /// <summary>
    /// The tick at which the wheel next has work: the start of its earliest occupied slot (a cascade or an
    /// expiry). Entries are never due before it. False when the wheel is empty.
    /// </summary>
    public bool TryGetNextExpiration(out long tick) => TryGetNextExpiration(out tick, out _);

    /// <summary>
    /// Processes every slot whose start is at or before <paramref name="nowTick"/>, in order: due entries are
    /// unlinked and appended to <paramref name="expired"/>, the others cascade to lower levels.
    /// </summary>
    public void Advance(long nowTick, ExpiredTimers expired)
    {
        while (_count > 0 && TryGetNextExpiration(out long deadline, out int index) && deadline <= nowTick)
        {
            _elapsed = deadline;
            TimerEntry? entry = _slots[index];
            _slots[index] = null;
            _occupied[index / SlotCount] &= ~(1UL << (index & SlotMask));
            while (entry is not null)
            {
                TimerEntry? next = entry.Next;
                entry.Next = null;
                entry.Prev = null;
                entry.Slot = TimerEntry.NotLinked;
                _count--;
                if (entry.DueTick <= deadline)
                {
                    expired.Add(entry);
                }
                else
                {
                    Insert(entry);
                }

                entry = next;
            }
        }

        if (nowTick > _elapsed)
        {
            _elapsed = nowTick;
        }
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

        Array.Clear(_occupied);
        _count = 0;
    }

    /// <summary>The level of an entry due at <paramref name="when"/>: the highest 6-bit group in which it differs from <paramref name="elapsed"/>.</summary>
    internal static int LevelFor(long elapsed, long when)
    {
        // OR-ing the slot mask makes level 0 the answer when only the lowest group differs; entries that
        // cross a 2^36 boundary (or were clamped to the span) differ above the top level and stay on it.
        ulong masked = ((ulong)elapsed ^ (ulong)when) | SlotMask;
        if (masked > MaxSpan)
        {
            return LevelCount - 1;
        }

        int significant = 63 - BitOperations.LeadingZeroCount(masked);
        return significant / SlotBits;
    }

    private bool TryGetNextExpiration(out long tick, out int index)
    {
        for (int level = 0; level < LevelCount; level++)
        {
            ulong occupied = _occupied[level];
            if (occupied == 0)
            {
                continue;
            }

            // Search from the slot after the current one, so that a top-level slot at or behind the current one
            // (a wrapped entry, one revolution away) is found last, in deadline order.
            int shift = level * SlotBits;
            int current = (int)((ulong)_elapsed >> shift) & SlotMask;
            int start = (current + 1) & SlotMask;
            int slot = (BitOperations.TrailingZeroCount(BitOperations.RotateRight(occupied, start)) + start) & SlotMask;

            long slotRange = 1L << shift;
            long levelRange = slotRange << SlotBits;
            long levelStart = _elapsed & ~(levelRange - 1);
            long deadline = levelStart + (slot * slotRange);
            if (deadline <= _elapsed)
            {
                deadline += levelRange;
            }

            tick = deadline;
            index = (level * SlotCount) + slot;
            return true;
        }

        tick = 0;
        index = -1;
        return false;
    }
}
