using Scheduler.Benchmarks.Compare;
using Scheduler.Benchmarks.Sources;
using Scheduler.Tests.Scheduling;

namespace Scheduler.Tests.Compare;

/// <summary>
/// The pooled-wakers rows of <c>compare</c> run their workloads through the same probes as the Tasks rows: each piece
/// must finish every exchange (a lost or doubled hand-off hangs or faults it) and report plausible figures.
/// </summary>
public sealed class WakerRowTests : IDisposable
{
    private static readonly TimeSpan s_timeout = TimeSpan.FromSeconds(60);
    private readonly WorkStealingTaskScheduler _scheduler = new(2);

    public void Dispose() => SchedulerTestHelpers.DisposeBounded(_scheduler);

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public async Task Pooled_ping_pong_pairs_finish_every_round_trip(bool onOurScheduler)
    {
        TaskScheduler where = onOurScheduler ? _scheduler : TaskScheduler.Default;

        // More pairs than workers, so hops cross workers and queue behind each other.
        await WakerPingPongPairs.Pooled(where, pairs: 16, roundTrips: 500).WaitAsync(s_timeout);
        await WakerPingPongPairs.Pooled(where, pairs: 1, roundTrips: 1).WaitAsync(s_timeout);
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public async Task DotNext_ping_pong_pairs_finish_every_round_trip(bool onOurScheduler)
    {
        TaskScheduler where = onOurScheduler ? _scheduler : TaskScheduler.Default;
        await WakerPingPongPairs.DotNext(where, pairs: 16, roundTrips: 500).WaitAsync(s_timeout);
        await WakerPingPongPairs.DotNext(where, pairs: 1, roundTrips: 1).WaitAsync(s_timeout);
    }

    [Theory]
    [InlineData(false, 200)]
    [InlineData(true, 20)]
    public void Pooled_and_DotNext_wake_signals_give_percentiles_through_the_wake_latency_probe(bool parked, int samples)
    {
        WakeGap gap = parked ? WakeGap.Parked : WakeGap.Busy;
        var context = new CompareContext(_scheduler, quick: true, s_timeout);

        double[] pooled = WakeLatencyProbe.Measure(context, _scheduler, new PooledWakeSignal(), samples, gap, "test");
        double[] dotNext = WakeLatencyProbe.Measure(context, TaskScheduler.Default, new DotNextWakeSignal(), samples, gap, "test");

        foreach (double[] percentiles in new[] { pooled, dotNext })
        {
            percentiles.Should().HaveCount(2);
            percentiles[0].Should().BePositive();
            percentiles[1].Should().BeGreaterThanOrEqualTo(percentiles[0]);
        }
    }

    [Fact]
    public void Pooled_and_DotNext_awaiters_are_weighed_and_released()
    {
        var context = new CompareContext(_scheduler, quick: true, s_timeout);
        const int Count = 2_000;

        double pooled = PendingProbes.BytesPerAwaiter(context, _scheduler, new PooledValueTaskSourceAwaiters(Count), Count, "test");
        double dotNext = PendingProbes.BytesPerAwaiter(context, TaskScheduler.Default, new DotNextAwaiters(Count), Count, "test");

        // At least the async method's state machine per awaiter; far below a kilobyte.
        pooled.Should().BeInRange(32, 1024);
        dotNext.Should().BeInRange(32, 1024);
    }
}
