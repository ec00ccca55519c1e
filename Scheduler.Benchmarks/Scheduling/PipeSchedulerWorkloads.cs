using System.IO.Pipelines;

namespace Scheduler.Benchmarks.Scheduling;

/// <summary>
/// PipeScheduler-shaped workloads, so <see cref="WorkStealingTaskScheduler.PipeScheduler"/> can be compared with
/// <see cref="PipeScheduler.ThreadPool"/> and with Pipelines.Sockets.Unofficial's <c>DedicatedThreadPoolPipeScheduler</c>.
/// </summary>
internal static class PipeSchedulerWorkloads
{
    private static readonly Action<object?> s_hop = Hop;

    /// <summary>
    /// pipe_schedule: an outside thread starts <paramref name="chains"/> callback chains; every callback schedules
    /// the next one of its chain through <see cref="PipeScheduler.Schedule"/>, <paramref name="hopsPerChain"/> in
    /// all — the way pipe reader and writer continuations hand work to each other.
    /// </summary>
    public static Task PipeSchedule(PipeScheduler scheduler, int chains, int hopsPerChain)
    {
        ArgumentNullException.ThrowIfNull(scheduler);
        ArgumentOutOfRangeException.ThrowIfLessThan(hopsPerChain, 1);
        var done = new WorkloadCompletion(chains);
        for (int i = 0; i < chains; i++)
        {
            scheduler.Schedule(s_hop, new Chain(scheduler, hopsPerChain, done));
        }

        return done.Task;
    }

    private static void Hop(object? state)
    {
        var chain = (Chain)state!;
        // Each hop happens-after the previous one of its chain through the scheduler's queue.
        if (--chain.Remaining == 0)
        {
            chain.Done.Signal();
            return;
        }

        try
        {
            chain.Scheduler.Schedule(s_hop, chain);
        }
        catch (Exception e)
        {
            chain.Done.Fail(e);
        }
    }

    private sealed class Chain(PipeScheduler scheduler, int hops, WorkloadCompletion done)
    {
        public PipeScheduler Scheduler { get; } = scheduler;

        public int Remaining { get; set; } = hops;

        public WorkloadCompletion Done { get; } = done;
    }
}
