using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Configs;

namespace Scheduler.Benchmarks.Scheduling;

/// <summary>
/// The scheduler against <see cref="TaskScheduler.Default"/> (the ThreadPool), one category per workload with the
/// ThreadPool as baseline, so BenchmarkDotNet's Ratio column reads "ours / ThreadPool" (below 1 = we are faster).
/// Run: <c>dotnet run -c Release --project Scheduler.Benchmarks -- --filter '*Scheduling*'</c>.
/// </summary>
[MemoryDiagnoser]
[ThreadingDiagnoser]
[CategoriesColumn]
[GroupBenchmarksBy(BenchmarkLogicalGroupRule.ByCategory)]
public class SchedulingBenchmarks
{
    private WorkStealingTaskScheduler _ours = null!;

    [GlobalSetup]
    public void Setup() => _ours = new WorkStealingTaskScheduler();

    [GlobalCleanup]
    public void Cleanup() => _ours.Dispose();

    [Benchmark(Baseline = true, Description = "ThreadPool")]
    [BenchmarkCategory("spawn_many_local")]
    public Task SpawnManyLocal_ThreadPool() => SchedulerWorkloads.SpawnManyLocal(TaskScheduler.Default, WorkloadSizes.SpawnMany);

    [Benchmark(Description = "WorkStealing")]
    [BenchmarkCategory("spawn_many_local")]
    public Task SpawnManyLocal_WorkStealing() => SchedulerWorkloads.SpawnManyLocal(_ours, WorkloadSizes.SpawnMany);

    [Benchmark(Baseline = true, Description = "ThreadPool")]
    [BenchmarkCategory("spawn_many_remote")]
    public Task SpawnManyRemote_ThreadPool() => SchedulerWorkloads.SpawnManyRemote(TaskScheduler.Default, WorkloadSizes.SpawnMany);

    [Benchmark(Description = "WorkStealing")]
    [BenchmarkCategory("spawn_many_remote")]
    public Task SpawnManyRemote_WorkStealing() => SchedulerWorkloads.SpawnManyRemote(_ours, WorkloadSizes.SpawnMany);

    [Benchmark(Baseline = true, Description = "ThreadPool")]
    [BenchmarkCategory("chained_spawn")]
    public Task ChainedSpawn_ThreadPool() => SchedulerWorkloads.ChainedSpawn(TaskScheduler.Default, WorkloadSizes.ChainDepth);

    [Benchmark(Description = "WorkStealing")]
    [BenchmarkCategory("chained_spawn")]
    public Task ChainedSpawn_WorkStealing() => SchedulerWorkloads.ChainedSpawn(_ours, WorkloadSizes.ChainDepth);

    [Benchmark(Baseline = true, Description = "ThreadPool")]
    [BenchmarkCategory("yield_many")]
    public Task YieldMany_ThreadPool() => SchedulerWorkloads.YieldMany(TaskScheduler.Default, WorkloadSizes.YieldTasks, WorkloadSizes.YieldsPerTask);

    [Benchmark(Description = "WorkStealing")]
    [BenchmarkCategory("yield_many")]
    public Task YieldMany_WorkStealing() => SchedulerWorkloads.YieldMany(_ours, WorkloadSizes.YieldTasks, WorkloadSizes.YieldsPerTask);

    [Benchmark(Baseline = true, Description = "ThreadPool")]
    [BenchmarkCategory("ping_pong")]
    public Task PingPong_ThreadPool() => SchedulerWorkloads.PingPong(TaskScheduler.Default, WorkloadSizes.PingPongPairs, WorkloadSizes.PingPongRoundTrips);

    [Benchmark(Description = "WorkStealing")]
    [BenchmarkCategory("ping_pong")]
    public Task PingPong_WorkStealing() => SchedulerWorkloads.PingPong(_ours, WorkloadSizes.PingPongPairs, WorkloadSizes.PingPongRoundTrips);

    [Benchmark(Baseline = true, Description = "ThreadPool")]
    [BenchmarkCategory("skynet")]
    public Task<long> Skynet_ThreadPool() => SchedulerWorkloads.Skynet(TaskScheduler.Default, WorkloadSizes.SkynetLeaves, WorkloadSizes.SkynetFanOut);

    [Benchmark(Description = "WorkStealing")]
    [BenchmarkCategory("skynet")]
    public Task<long> Skynet_WorkStealing() => SchedulerWorkloads.Skynet(_ours, WorkloadSizes.SkynetLeaves, WorkloadSizes.SkynetFanOut);

    [Benchmark(Baseline = true, Description = "ThreadPool")]
    [BenchmarkCategory("fork_join")]
    public Task<long> ForkJoin_ThreadPool() => SchedulerWorkloads.ForkJoin(TaskScheduler.Default, WorkloadSizes.FibN);

    [Benchmark(Description = "WorkStealing")]
    [BenchmarkCategory("fork_join")]
    public Task<long> ForkJoin_WorkStealing() => SchedulerWorkloads.ForkJoin(_ours, WorkloadSizes.FibN);
}
