namespace Scheduler.Timers;

/// <summary>
/// The schedule a <see cref="WheelTimer"/> should follow, packed in one 64-bit word so that a change is a single
/// store (never torn) and a reader sees one whole change or another: the kind in bits 0–1, <see cref="Periodic"/>,
/// <see cref="Transition"/>, and a 59-bit value (a deadline since the wheel's origin, or a delay, in Stopwatch units).
/// </summary>
/// <remarks>
/// <para>Why a word and plain stores: the timeout pattern (arm a 30 s timeout, disarm it) is a pair of changes on one
/// thread, and an interlocked operation costs ~7 ns on the 2-core VM this was measured on: a word written with a plain
/// store makes the pair cost no atomic operation at all while the entry waits on the pending stack.</para>
/// <para>Equal words mean equal schedules, so a reader never needs to tell two writes apart: a relative arm (which
/// has no deadline until the reconciler measures it) is rewritten by the reconciler to the absolute deadline it
/// links, so a later identical relative arm is a different word; a one-shot expiry rewrites the word to
/// <see cref="Fired"/>, so that the next arm for the same deadline differs from it too.</para>
/// </remarks>
internal static class TimerIntent
{
    /// <summary>Not armed (also the initial word, and a due time of zero once its callback is queued).</summary>
    internal const long Disarmed = 0;

    /// <summary>A one-shot expiry has fired for the deadline in the value.</summary>
    internal const long Fired = 1;

    /// <summary>Armed for a delay (the value), measured by the reconciler from its own clock reading.</summary>
    internal const long Relative = 2;

    /// <summary>Armed for the deadline in the value.</summary>
    internal const long Absolute = 3;

    /// <summary>Re-armed every period (the timer's period field, written before this word: a seqlock).</summary>
    internal const long Periodic = 4;

    /// <summary>A periodic writer is between its two stores; a reader treats the intent as changing.</summary>
    internal const long Transition = 8;

    /// <summary>A token that no word equals: an expiry that must not fire.</summary>
    internal const long NoFire = -1;

    /// <summary>The largest value; decoded as "never" (long.MaxValue).</summary>
    internal const long MaxValue = (1L << 59) - 1;

    private const long KindMask = 3;
    private const int ValueShift = 4;

    /// <summary>
    /// Relative arm <paramref name="intent"/> as the reconciler claims it before it reads the clock that measures the
    /// delay: the same word with the <see cref="Transition"/> bit, which no final word carries, so an identical arm
    /// written after the claim is a different word (TimerWheel links the claimed word only if it is still there).
    /// </summary>
    internal static long ClaimedRelative(long intent) => intent | Transition;

    internal static long RelativeOf(long delayUnits) => (Clamp(delayUnits) << ValueShift) | Relative;

    /// <summary>An absolute arm for <paramref name="deadline"/>; long.MaxValue (or anything past the value's range) means never.</summary>
    internal static long AbsoluteOf(long deadline, long origin)
    {
        long sinceOrigin = unchecked(deadline - origin);
        bool overflowed = ((deadline ^ origin) & (deadline ^ sinceOrigin)) < 0;
        return ((deadline == long.MaxValue || overflowed ? MaxValue : Clamp(sinceOrigin)) << ValueShift) | Absolute;
    }

    /// <summary>The deadline of an absolute (or fired) word: the inverse of <see cref="AbsoluteOf"/>.</summary>
    internal static long DeadlineOf(long intent, long origin)
    {
        long value = ValueOf(intent);
        return value == MaxValue ? long.MaxValue : origin + value;
    }

    internal static long FiredFrom(long intent) => (intent & ~((1L << ValueShift) - 1)) | Fired;

    internal static long ValueOf(long intent) => intent >>> ValueShift;

    internal static bool IsRelative(long intent) => (intent & KindMask) == Relative;

    internal static bool IsAbsolute(long intent) => (intent & KindMask) == Absolute;

    private static long Clamp(long value) => value < 0 ? 0 : value > MaxValue ? MaxValue : value;
}
