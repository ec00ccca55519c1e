using System.IO.Pipelines;
using BenchmarkDotNet.Attributes;
using Pipelines.Sockets.Unofficial;

namespace Scheduler.Benchmarks.Scheduling;

/// <summary>
/// pipe_schedule: <see cref="WorkStealingTaskScheduler.PipeScheduler"/> against <see cref="PipeScheduler.ThreadPool"/>
/// (baseline) and Pipelines.Sockets.Unofficial's <see cref="DedicatedThreadPoolPipeScheduler"/> with as many workers.
/// </summary>
[MemoryDiagnoser]
[ThreadingDiagnoser]
public class PipeSchedulerBenchmarks
{
    private WorkStealingTaskScheduler _ours = null!;
    private DedicatedThreadPoolPipeScheduler _dedicated = null!;

    [GlobalSetup]
    public void Setup()
    {
        _ours = new WorkStealingTaskScheduler();
        _dedicated = new DedicatedThreadPoolPipeScheduler("pipe_schedule peer", Environment.ProcessorCount);
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        _dedicated.Dispose();
        _ours.Dispose();
    }

    [Benchmark(Baseline = true, Description = "PipeScheduler.ThreadPool")]
    public Task PipeSchedule_ThreadPool() => PipeSchedulerWorkloads.PipeSchedule(PipeScheduler.ThreadPool, WorkloadSizes.PipeChains, WorkloadSizes.PipeHopsPerChain);

    [Benchmark(Description = "WorkStealing")]
    public Task PipeSchedule_WorkStealing() => PipeSchedulerWorkloads.PipeSchedule(_ours.PipeScheduler, WorkloadSizes.PipeChains, WorkloadSizes.PipeHopsPerChain);

    [Benchmark(Description = "DedicatedThreadPoolPipeScheduler")]
    public Task PipeSchedule_Dedicated() => PipeSchedulerWorkloads.PipeSchedule(_dedicated, WorkloadSizes.PipeChains, WorkloadSizes.PipeHopsPerChain);
}
