using System.Diagnostics;

namespace Scheduler.Timers;

// Conversions between TimeSpan, Stopwatch timestamps and wheel ticks. Tick n covers the timestamps
// [origin + n*tick, origin + (n+1)*tick); a deadline's due tick is the first tick that *starts* at or after it.
public sealed partial class TimerWheel
{
    /// <summary><paramref name="span"/> (non-negative) in Stopwatch units, rounded up, saturating at <see cref="long.MaxValue"/>.</summary>
    internal long ToTimestampUnits(TimeSpan span)
    {
        long ticks = span.Ticks;
        if (_timestampUnitsPerTimeSpanTick != 0)
        {
            // The common case (Linux: 1 ns units, 100 per TimeSpan tick): exact, no division.
            return ticks > _maxExactTimeSpanTicks ? long.MaxValue : ticks * _timestampUnitsPerTimeSpanTick;
        }

        UInt128 units = (((UInt128)(ulong)ticks * (ulong)Stopwatch.Frequency) + (TimeSpan.TicksPerSecond - 1)) / (ulong)TimeSpan.TicksPerSecond;
        return units > long.MaxValue ? long.MaxValue : (long)units;
    }

    /// <summary>The deadline <paramref name="delay"/> after <paramref name="nowTimestamp"/>, saturating.</summary>
    internal long DeadlineAfter(long nowTimestamp, TimeSpan delay)
    {
        return SaturatingAdd(nowTimestamp, ToTimestampUnits(delay));
    }

    /// <summary><paramref name="timestamp"/> + <paramref name="units"/> (both non-negative), saturating at <see cref="long.MaxValue"/>.</summary>
    internal static long SaturatingAdd(long timestamp, long units) => units > long.MaxValue - timestamp ? long.MaxValue : timestamp + units;

    /// <summary>The tick containing <paramref name="timestamp"/> (rounded down).</summary>
    internal long TickOf(long timestamp)
    {
        long sinceOrigin = timestamp - _originTimestamp;
        return sinceOrigin <= 0 ? 0 : _tickDivisor.DivRem(sinceOrigin, out _);
    }

    /// <summary>The first tick starting at or after <paramref name="deadlineTimestamp"/> (rounded up).</summary>
    internal long DueTickOf(long deadlineTimestamp)
    {
        long sinceOrigin = deadlineTimestamp - _originTimestamp;
        if (sinceOrigin <= 0)
        {
            return 0;
        }

        long tick = _tickDivisor.DivRem(sinceOrigin, out long remainder);
        return remainder == 0 ? tick : tick + 1;
    }

    /// <summary>The timestamp at which <paramref name="tick"/> starts, saturating.</summary>
    internal long StartOfTick(long tick) =>
        tick > (long.MaxValue - _originTimestamp) / _tickTimestampUnits ? long.MaxValue : _originTimestamp + (tick * _tickTimestampUnits);

    /// <summary>Milliseconds to sleep so as to wake at or after <paramref name="wakeTimestamp"/>, rounded up, at least 1.</summary>
    internal static int MillisecondsUntil(long nowTimestamp, long wakeTimestamp)
    {
        double milliseconds = Math.Ceiling((wakeTimestamp - (double)nowTimestamp) * 1000.0 / Stopwatch.Frequency);
        return milliseconds >= int.MaxValue ? int.MaxValue : Math.Max(1, (int)milliseconds);
    }
}
