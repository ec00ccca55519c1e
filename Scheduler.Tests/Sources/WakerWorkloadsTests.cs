using Scheduler.Benchmarks.Sources;
using Scheduler.Tests.Scheduling;
using Xunit.Abstractions;

namespace Scheduler.Tests.Sources;

/// <summary>Smoke tests of the workloads the compare command calls: they run, finish and report plausible figures.</summary>
[Collection(SourcesResourceGroup.Name)]
public sealed class WakerWorkloadsTests(ITestOutputHelper output)
{
    [Fact]
    public async Task Ping_pong_variants_complete_every_round_trip()
    {
        // The bound is a hang detector, not a speed limit: every hand-off of the scheduler variant crosses between its
        // two workers, and beside two processes busy on both cores each one waits for a time slice (2,000 round trips
        // took 25.6 s so, against 17 ms on a quiet machine, while the ThreadPool variants stay on one thread).
        var scheduler = new WorkStealingTaskScheduler(2);
        await using var disposeScheduler = SchedulerTestHelpers.DisposeWithin(scheduler);
        TimeSpan hang = TimeSpan.FromMinutes(2);
        TimeSpan pooled = await WakerWorkloads.PingPongPooledAsync(scheduler, 2_000).WaitAsync(hang);
        TimeSpan pooledPool = await WakerWorkloads.PingPongPooledAsync(null, 2_000).WaitAsync(hang);
        TimeSpan tcs = await WakerWorkloads.PingPongTaskCompletionSourceAsync(null, 2_000).WaitAsync(hang);
        TimeSpan dotNext = await WakerWorkloads.PingPongDotNextAsync(null, 2_000).WaitAsync(hang);
        output.WriteLine($"ping_pong 2,000 round trips: pooled/scheduler {pooled.TotalMilliseconds:F1} ms, pooled/ThreadPool {pooledPool.TotalMilliseconds:F1} ms, TCS/ThreadPool {tcs.TotalMilliseconds:F1} ms, DotNext/ThreadPool {dotNext.TotalMilliseconds:F1} ms");

        foreach (TimeSpan elapsed in new[] { pooled, pooledPool, tcs, dotNext })
        {
            elapsed.Should().BePositive();
        }
    }

    [Fact]
    public void Wake_latency_reports_percentiles_for_both_variants()
    {
        var scheduler = new WorkStealingTaskScheduler(2);
        using var disposeScheduler = SchedulerTestHelpers.DisposeBoundedOnExit(scheduler);
        WakeLatency ours = WakerWorkloads.MeasureWakeLatencyPooled(scheduler, 100);
        WakeLatency baseline = WakerWorkloads.MeasureWakeLatencyTaskCompletionSource(100);
        output.WriteLine($"wake_latency: pooled/parked worker p50 {ours.P50Microseconds:F1} µs p99 {ours.P99Microseconds:F1} µs; TCS/ThreadPool p50 {baseline.P50Microseconds:F1} µs p99 {baseline.P99Microseconds:F1} µs");

        foreach (WakeLatency latency in new[] { ours, baseline })
        {
            latency.Samples.Should().Be(100);
            latency.P50Microseconds.Should().BePositive();
            latency.P99Microseconds.Should().BeGreaterThanOrEqualTo(latency.P50Microseconds);
        }
    }

    [Fact]
    public void Pending_awaiter_memory_is_measured_for_both_variants()
    {
        var scheduler = new WorkStealingTaskScheduler(2);
        using var disposeScheduler = SchedulerTestHelpers.DisposeBoundedOnExit(scheduler);
        // GetTotalMemory is process-wide, and what a previous test leaves winding down moves it both ways: one run in
        // session 29 measured over 1 KiB per awaiter, one in session 34 measured −190 B (about 1 MB freed by someone
        // else between the two readings). So bound the median of three measurements, which one outlier either way
        // cannot move. (Parking 20,000 instead of 2,000 would dilute the noise too, but made the test take 20 s.)
        double ours = MedianOfThree(() => WakerWorkloads.PendingAwaiterBytesPooled(scheduler, 2_000));
        double baseline = MedianOfThree(() => WakerWorkloads.PendingAwaiterBytesTaskCompletionSource(2_000));
        output.WriteLine($"pending_task_memory: pooled {ours:F0} B/awaiter, TCS {baseline:F0} B/awaiter");

        ours.Should().BeInRange(1, 1024);
        baseline.Should().BeInRange(1, 4096);

        static double MedianOfThree(Func<double> measure) => new[] { measure(), measure(), measure() }.Order().ElementAt(1);
    }
}
