using BenchmarkDotNet.Attributes;

namespace Scheduler.Benchmarks.Sources;

/// <summary>
/// Cross-task hand-offs (every await really suspends and is resumed by the other side): pooled wakers on our
/// scheduler and on the ThreadPool, against <see cref="TaskCompletionSource{TResult}"/> and DotNext's
/// <c>ValueTaskCompletionSource&lt;T&gt;</c>. One operation is one round trip (two wake-ups).
/// </summary>
[MemoryDiagnoser]
public class WakerPingPongBenchmarks
{
    private const int RoundTrips = 2_000;
    private WorkStealingTaskScheduler _scheduler = null!;

    [GlobalSetup]
    public void Setup() => _scheduler = new WorkStealingTaskScheduler();

    [GlobalCleanup]
    public void Cleanup() => _scheduler.Dispose();

    [Benchmark(Baseline = true, OperationsPerInvoke = RoundTrips)]
    public Task<TimeSpan> TaskCompletionSource_ThreadPool() => WakerWorkloads.PingPongTaskCompletionSourceAsync(null, RoundTrips);

    [Benchmark(OperationsPerInvoke = RoundTrips)]
    public Task<TimeSpan> PooledWakers_Scheduler() => WakerWorkloads.PingPongPooledAsync(_scheduler, RoundTrips);

    [Benchmark(OperationsPerInvoke = RoundTrips)]
    public Task<TimeSpan> PooledWakers_ThreadPool() => WakerWorkloads.PingPongPooledAsync(null, RoundTrips);

    [Benchmark(OperationsPerInvoke = RoundTrips)]
    public Task<TimeSpan> DotNext_ThreadPool() => WakerWorkloads.PingPongDotNextAsync(null, RoundTrips);

    [Benchmark(OperationsPerInvoke = RoundTrips)]
    public Task<TimeSpan> DotNext_Scheduler() => WakerWorkloads.PingPongDotNextAsync(_scheduler, RoundTrips);
}
