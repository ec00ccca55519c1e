using System.Diagnostics;
using System.Numerics;

namespace Scheduler.Timers;

/// <summary>
/// The geometry of a hierarchical timing wheel, without its lists: 6 levels of 64 slots, the occupancy bitmask of
/// each level, the last processed tick and the entry count. <see cref="TimingWheel"/> (timer objects) and
/// <see cref="DelayWheel"/> (pooled delay slots) link their entries their own way and share this arithmetic.
/// Single-threaded (the <see cref="TimerWheel"/> lock guards it) and clock-free: it only knows ticks.
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
internal abstract class HierarchicalWheel
{
    internal const int LevelCount = 6;
    internal const int SlotBits = 6;
    internal const int SlotCount = 1 << SlotBits;

    /// <summary>The number of slot lists: level * <see cref="SlotCount"/> + slot.</summary>
    internal const int ListCount = LevelCount * SlotCount;

    /// <summary>The farthest an entry can be placed ahead of <see cref="Elapsed"/>; later ones are re-placed when reached.</summary>
    internal const long MaxSpan = (1L << (LevelCount * SlotBits)) - 1;

    private const int SlotMask = SlotCount - 1;

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

    /// <summary>
    /// The tick to link an entry due at <paramref name="dueTick"/> by, with the clock at <paramref name="nowTick"/>.
    /// After an idle spell an empty wheel's notion of "now" is stale; catching up first keeps the new entry on the
    /// level its real distance calls for instead of cascading down through the idle gap — never past the entry's own
    /// due tick, and never onto <paramref name="nowTick"/> itself (one tick short of it): a drain links several
    /// entries before the advance to <paramref name="nowTick"/>, and one that is overdue, linked after a later one
    /// caught the wheel up, must still land on a tick that advance processes instead of the next one. So a change
    /// reconciled after its deadline is expired by the very next advance. Rounding up never makes an entry early: a
    /// due tick already processed (reconciled late, or a clock that stepped backwards) becomes the next one, which is
    /// later still.
    /// </summary>
    public long PrepareInsert(long dueTick, long nowTick)
    {
        if (_count == 0)
        {
            FastForward(Math.Min(nowTick, dueTick) - 1);
        }

        return Math.Max(dueTick, _elapsed + 1);
    }

    /// <summary>
    /// The tick at which the wheel next has work: the start of its earliest occupied slot (a cascade or an
    /// expiry). Entries are never due before it. False when the wheel is empty.
    /// </summary>
    public bool TryGetNextExpiration(out long tick) => TryGetNextExpiration(out tick, out _);

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

    /// <summary>Counts in an entry due at <paramref name="dueTick"/> (after <see cref="Elapsed"/>) and returns the list it belongs on.</summary>
    protected int AddToList(long dueTick)
    {
        Debug.Assert(dueTick > _elapsed, "Due entries are fired, not inserted.");
        long when = dueTick - _elapsed > MaxSpan ? _elapsed + MaxSpan : dueTick;
        int level = LevelFor(_elapsed, when);
        int slot = (int)((ulong)when >> (level * SlotBits)) & SlotMask;
        _occupied[level] |= 1UL << slot;
        _count++;
        return (level * SlotCount) + slot;
    }

    /// <summary>Counts out one entry removed from list <paramref name="list"/>; <paramref name="listEmptied"/> when it was the last.</summary>
    protected void RemovedFromList(int list, bool listEmptied)
    {
        if (listEmptied)
        {
            _occupied[list / SlotCount] &= ~(1UL << (list & SlotMask));
        }

        _count--;
    }

    /// <summary>
    /// The next list to process if it starts at or before <paramref name="nowTick"/>: marks it empty and moves
    /// <see cref="Elapsed"/> to its start (<paramref name="start"/>). The caller takes every entry off it, counting
    /// each out with <see cref="TakenFromList"/>, and expires or re-inserts it.
    /// </summary>
    protected bool TryTakeNextDueList(long nowTick, out int list, out long start)
    {
        if (_count > 0 && TryGetNextExpiration(out start, out list) && start <= nowTick)
        {
            _elapsed = start;
            _occupied[list / SlotCount] &= ~(1UL << (list & SlotMask));
            return true;
        }

        list = -1;
        start = 0;
        return false;
    }

    /// <summary>Counts out an entry taken off a list by <see cref="TryTakeNextDueList"/>.</summary>
    protected void TakenFromList() => _count--;

    /// <summary>After processing every list due by <paramref name="nowTick"/>, moves <see cref="Elapsed"/> to it.</summary>
    protected void AdvancedTo(long nowTick)
    {
        if (nowTick > _elapsed)
        {
            _elapsed = nowTick;
        }
    }

    /// <summary>Forgets every entry (the caller has unlinked them all).</summary>
    protected void Cleared()
    {
        Array.Clear(_occupied);
        _count = 0;
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
