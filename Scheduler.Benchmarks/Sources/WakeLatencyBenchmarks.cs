using BenchmarkDotNet.Attributes;

namespace Scheduler.Benchmarks.Sources;

/// <summary>
/// Cross-thread wake latency: a foreign thread completes a waker ~1 ms after the awaiter went idle, and the
/// sample is the time until the continuation runs. Pooled wakers resuming a parked worker of our scheduler
/// against <see cref="TaskCompletionSource{TResult}"/> resuming on the ThreadPool. BenchmarkDotNet reports
/// the (sleep-dominated) time per batch; the p50/p99 that matter are recorded with HdrHistogram and printed
/// at the end of each benchmark's run.
/// </summary>
[MemoryDiagnoser]
public class WakeLatencyBenchmarks
{
    private const int Samples = 200;
    private readonly List<WakeLatency> _results = [];
    private WorkStealingTaskScheduler _scheduler = null!;

    [GlobalSetup]
    public void Setup() => _scheduler = new WorkStealingTaskScheduler();

    [GlobalCleanup]
    public void Cleanup()
    {
        _scheduler.Dispose();
        if (_results.Count > 0)
        {
            Console.WriteLine($"// wake latency over {_results.Count} batches of {Samples}: median p50 {Median(r => r.P50Microseconds):F1} µs, median p99 {Median(r => r.P99Microseconds):F1} µs");
        }
    }

    [IterationSetup]
    public void ClearOldResults()
    {
        if (_results.Count > 1_000)
        {
            _results.Clear();
        }
    }

    [Benchmark(Baseline = true, OperationsPerInvoke = Samples)]
    public WakeLatency TaskCompletionSource_ThreadPool() => Record(WakerWorkloads.MeasureWakeLatencyTaskCompletionSource(Samples));

    [Benchmark(OperationsPerInvoke = Samples)]
    public WakeLatency PooledWaker_ParkedWorker() => Record(WakerWorkloads.MeasureWakeLatencyPooled(_scheduler, Samples));

    private WakeLatency Record(WakeLatency latency)
    {
        _results.Add(latency);
        return latency;
    }

    private double Median(Func<WakeLatency, double> selector)
    {
        double[] values = _results.Select(selector).Order().ToArray();
        return values[values.Length / 2];
    }
}
