using System.Diagnostics;

namespace Scheduler.Benchmarks.Compare;

/// <summary>Measurements taken while a batch of awaiters is parked: idle CPU and bytes per pending awaiter.</summary>
internal static class PendingProbes
{
    /// <summary>
    /// pending_task_memory: bytes allocated per awaiter while parking <paramref name="count"/> of them on a thread of
    /// <paramref name="scheduler"/> (measured on that thread alone, so other threads' allocations do not count).
    /// </summary>
    public static double BytesPerAwaiter(CompareContext context, TaskScheduler scheduler, PendingAwaiters awaiters, int count, string what)
    {
        ArgumentNullException.ThrowIfNull(context);
        Task<long> park = Task.Factory.StartNew(
            static state =>
            {
                long before = GC.GetAllocatedBytesForCurrentThread();
                ((PendingAwaiters)state!).Park();
                return GC.GetAllocatedBytesForCurrentThread() - before;
            },
            awaiters,
            CancellationToken.None,
            TaskCreationOptions.None,
            scheduler);
        long bytes = context.Wait(park, what);
        context.Wait(awaiters.ReleaseAsync(), what);
        return (double)bytes / count;
    }

    /// <summary>
    /// idle_cpu: process CPU milliseconds per wall-clock second while <paramref name="awaiters"/> sit parked on
    /// <paramref name="scheduler"/>, measured over <paramref name="window"/> after <paramref name="settle"/> has passed
    /// (so spinning that stops within the settle time is not counted). Uses <see cref="Environment.CpuUsage"/>
    /// (getrusage: microsecond resolution, where <c>Process.TotalProcessorTime</c> reads 10 ms clock ticks).
    /// </summary>
    public static double IdleCpu(CompareContext context, TaskScheduler scheduler, PendingAwaiters awaiters, TimeSpan settle, TimeSpan window, string what)
    {
        ArgumentNullException.ThrowIfNull(context);
        ArgumentNullException.ThrowIfNull(awaiters);
        Task park = Task.Factory.StartNew(static state => ((PendingAwaiters)state!).Park(), awaiters, CancellationToken.None, TaskCreationOptions.None, scheduler);
        context.Wait(park, what);
        try
        {
            Thread.Sleep(settle);
            TimeSpan cpuBefore = Environment.CpuUsage.TotalTime;
            long begin = Stopwatch.GetTimestamp();
            Thread.Sleep(window);
            TimeSpan cpu = Environment.CpuUsage.TotalTime - cpuBefore;
            return cpu.TotalMilliseconds / Stopwatch.GetElapsedTime(begin).TotalSeconds;
        }
        finally
        {
            context.Wait(awaiters.ReleaseAsync(), what);
        }
    }
}
