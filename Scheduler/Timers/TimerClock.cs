using System.Diagnostics;

namespace Scheduler.Timers;

/// <summary>
/// Where the wheel reads the time: <see cref="Stopwatch"/> in production; tests substitute a clock they
/// advance by hand to drive the wheel deterministically. Timestamps are in <see cref="Stopwatch.Frequency"/> units.
/// </summary>
internal abstract class TimerClock
{
    /// <summary>The monotonic <see cref="Stopwatch"/> clock.</summary>
    public static TimerClock System { get; } = new StopwatchClock();

    public abstract long GetTimestamp();

    private sealed class StopwatchClock : TimerClock
    {
        public override long GetTimestamp() => Stopwatch.GetTimestamp();
    }
}
