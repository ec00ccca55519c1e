namespace Scheduler.Benchmarks.Scheduling;

/// <summary>
/// The scheduler workloads, written once against <see cref="TaskScheduler"/> so the BenchmarkDotNet suite and
/// the <c>compare</c> command run exactly the same code on <see cref="TaskScheduler.Default"/> (the ThreadPool)
/// and on a <see cref="WorkStealingTaskScheduler"/>. Each method starts the workload and returns a task that
/// completes when all of it has run; the caller decides how to wait and what to time.
/// </summary>
/// <remarks>
/// The shapes follow tokio's scheduler benchmarks. Delegates are static and state travels in the
/// <c>object? state</c> argument, so the harness allocates no closures of its own: what is allocated is what
/// the scheduler and the TPL allocate.
/// </remarks>
internal static partial class SchedulerWorkloads
{
    private static readonly Action<object?> s_signal = static state => ((WorkloadCompletion)state!).Signal();
    private static readonly Action<object?> s_spawnChildren = SpawnChildren;
    private static readonly Action<object?> s_chainStep = ChainStep;

    /// <summary>spawn_many_local: one task on a worker spawns <paramref name="count"/> children (its local queue).</summary>
    public static Task SpawnManyLocal(TaskScheduler scheduler, int count)
    {
        var spawn = new SpawnState(scheduler, count);
        StartNew(s_spawnChildren, spawn, scheduler);
        return spawn.Done.Task;
    }

    /// <summary>spawn_many_remote: a thread that belongs to no scheduler spawns <paramref name="count"/> tasks (the injection path).</summary>
    public static Task SpawnManyRemote(TaskScheduler scheduler, int count)
    {
        var spawn = new SpawnState(scheduler, count);
        // A dedicated thread, not the caller's: the caller may itself be a ThreadPool thread, whose spawns
        // would land in its local queue and turn the baseline into spawn_many_local.
        var producer = new Thread(static state => SpawnChildren(state)) { IsBackground = true, Name = "spawn_many_remote producer" };
        producer.UnsafeStart(spawn);
        return spawn.Done.Task;
    }

    /// <summary>chained_spawn: each task spawns the next, <paramref name="depth"/> in a row (spawn-to-run latency, no parallelism).</summary>
    public static Task ChainedSpawn(TaskScheduler scheduler, int depth)
    {
        var chain = new ChainState(scheduler, depth);
        StartNew(s_chainStep, chain, scheduler);
        return chain.Done.Task;
    }

    private static void SpawnChildren(object? state)
    {
        var spawn = (SpawnState)state!;
        try
        {
            for (int i = 0; i < spawn.Count; i++)
            {
                StartNew(s_signal, spawn.Done, spawn.Scheduler);
            }
        }
        catch (Exception e)
        {
            spawn.Done.Fail(e);
        }
    }

    private static void ChainStep(object? state)
    {
        var chain = (ChainState)state!;
        // No interlocking needed: each step happens-after the previous one through the queue.
        if (--chain.Remaining == 0)
        {
            chain.Done.Signal();
            return;
        }

        try
        {
            StartNew(s_chainStep, chain, chain.Scheduler);
        }
        catch (Exception e)
        {
            chain.Done.Fail(e);
        }
    }

    private static Task StartNew(Action<object?> action, object? state, TaskScheduler scheduler) =>
        Task.Factory.StartNew(action, state, CancellationToken.None, TaskCreationOptions.None, scheduler);

    private sealed class SpawnState(TaskScheduler scheduler, int count)
    {
        public TaskScheduler Scheduler { get; } = scheduler;

        public int Count { get; } = count;

        public WorkloadCompletion Done { get; } = new(count);
    }

    private sealed class ChainState(TaskScheduler scheduler, int depth)
    {
        public TaskScheduler Scheduler { get; } = scheduler;

        public int Remaining { get; set; } = depth;

        public WorkloadCompletion Done { get; } = new(1);
    }
}
