using Scheduler.Benchmarks.Timers;

namespace Scheduler.Tests.Timers;

/// <summary>The workloads behind the benchmarks and the compare command's timers rows, run small.</summary>
/// <remarks>
/// Run alone, like the other resource measurements: CompareDelays measures process-wide CPU and bytes and
/// CompareTimeoutPattern times tight loops, which parallel tests would distort (and which would slow them down).
/// </remarks>
[Collection(ResourceMeasurementGroup.Name)]
public sealed class TimerWorkloadsTests
{
    [Fact]
    public void Delay_comparison_reports_both_sides_and_the_wheel_is_never_early()
    {
        TimerComparison result = TimerWorkloads.CompareDelays(3_000, TimeSpan.FromMilliseconds(20));

        foreach (TimerWorkloadResult side in new[] { result.Wheel, result.TaskDelay })
        {
            side.Count.Should().Be(3_000);
            side.WallMilliseconds.Should().BePositive();
            side.BytesAllocated.Should().BePositive();
            side.BytesPerPendingTimer.Should().BePositive();
            side.LatenessP99Milliseconds.Should().BeGreaterThanOrEqualTo(side.LatenessP50Milliseconds);
        }

        result.Wheel.Name.Should().Be("TimerWheel.DelayAsync");
        result.TaskDelay.Name.Should().Be("Task.Delay");
        result.Wheel.EarlyFirings.Should().Be(0);
        result.Wheel.LatenessP50Milliseconds.Should().BeGreaterThanOrEqualTo(0);
    }

    [Fact]
    public void Timeout_pattern_comparison_covers_every_variant()
    {
        IReadOnlyList<TimeoutPatternResult> results = TimerWorkloads.CompareTimeoutPattern(2_000, warmUp: TimeSpan.FromMilliseconds(5));

        results.Should().HaveCount(5);
        results.Should().OnlyContain(r => r.Operations == 2_000 && r.NanosecondsPerOperation > 0);
        results.Single(r => r.Name.Contains("ITimer.Change", StringComparison.Ordinal)).BytesPerOperation.Should().Be(0);
    }

    [Fact]
    public void A_pending_DelayAsync_allocates_less_than_a_pending_Task_Delay()
    {
        // The compare command's pending_timer_memory row; a pooled entry may come from the pool (0 B), so the
        // wheel's figure is at most its entry size.
        double ours = TimerWorkloads.MeasurePendingBytes(2_000, useWheel: true);
        double bcl = TimerWorkloads.MeasurePendingBytes(2_000, useWheel: false);
        ours.Should().BeLessThan(bcl, $"a pending DelayAsync ({ours:F0} B) is one pooled entry, Task.Delay ({bcl:F0} B) a promise and a timer");
    }
}
