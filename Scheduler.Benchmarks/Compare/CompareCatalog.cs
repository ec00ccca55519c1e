using System.Globalization;
using System.IO.Pipelines;
using Pipelines.Sockets.Unofficial;
using Scheduler.Benchmarks.IO;
using Scheduler.Benchmarks.Scheduling;
using Scheduler.Benchmarks.Sources;

namespace Scheduler.Benchmarks.Compare;

/// <summary>
/// Every row group of the <c>compare</c> table, in table order. Adding a row is one entry here: a name (what
/// <c>--only</c> matches; several entries may share one, e.g. ping_pong with Tasks and with pooled wakers), a
/// sentence for the docs, and a comparison:
/// <list type="bullet">
/// <item><c>Comparison.Timed(c, name, s =&gt; Workload(s))</c>: time one body on the ThreadPool and on ours;</item>
/// <item><c>Comparison.Timed(name, "ThreadPool", () =&gt; Bcl(), () =&gt; Ours(c.Scheduler), variant).PeerTimed("Peer", () =&gt; ...)</c>:
/// time different bodies (e.g. TaskCompletionSource vs pooled wakers), peers in their own columns;</item>
/// <item><c>new Comparison(name, metrics).Baseline(...).Ours(...)</c> with any <see cref="MeasureRound"/> for other
/// metrics (latency percentiles, CPU, bytes, throughput); <see cref="WakeSignal"/> and <see cref="PendingAwaiters"/>
/// let another awaitable reuse the wake_latency, idle_cpu and pending_task_memory probes.</item>
/// </list>
/// Workloads that other parts of the library have not delivered yet simply have no entry (no placeholder rows).
/// </summary>
internal static partial class CompareCatalog
{
    private const int PendingAwaiterCount = 10_000;
    private const string PooledWakers = "pooled wakers";
    private const string DotNextPeer = "DotNext ValueTaskCompletionSource (ThreadPool)";

    public static IReadOnlyList<CompareEntry> Entries { get; } =
    [
        new("spawn_many_local",
            $"One task on a worker spawns {N(WorkloadSizes.SpawnMany)} tasks (local queue path); time until all ran.",
            c => Comparison.Timed(c, "spawn_many_local", s => SchedulerWorkloads.SpawnManyLocal(s, WorkloadSizes.SpawnMany))),
        new("spawn_many_remote",
            $"A thread outside the scheduler spawns {N(WorkloadSizes.SpawnMany)} tasks (injection path); time until all ran.",
            c => Comparison.Timed(c, "spawn_many_remote", s => SchedulerWorkloads.SpawnManyRemote(s, WorkloadSizes.SpawnMany))),
        new("chained_spawn",
            $"Each task spawns the next, {N(WorkloadSizes.ChainDepth)} deep (spawn-to-run latency, no parallelism).",
            c => Comparison.Timed(c, "chained_spawn", s => SchedulerWorkloads.ChainedSpawn(s, WorkloadSizes.ChainDepth))),
        new("yield_many",
            $"{WorkloadSizes.YieldTasks} tasks each `await Task.Yield()` {WorkloadSizes.YieldsPerTask} times.",
            c => Comparison.TimedWithSynchronizationContextPeer(c, "yield_many", s => SchedulerWorkloads.YieldMany(s, WorkloadSizes.YieldTasks, WorkloadSizes.YieldsPerTask))),
        new("ping_pong",
            $"Tasks: {WorkloadSizes.PingPongPairs} pairs of tasks bounce a ball {WorkloadSizes.PingPongRoundTrips} round trips each through awaited `TaskCompletionSource`s (asynchronous continuations). " +
            "The ball, the next inbox, travels in a field the receiver clears: hops never form a chain (a chain of every hop made the row time the GC, see `SchedulerWorkloads.Hop`).",
            c => Comparison.TimedWithSynchronizationContextPeer(c, "ping_pong", s => SchedulerWorkloads.PingPong(s, WorkloadSizes.PingPongPairs, WorkloadSizes.PingPongRoundTrips), variant: "Tasks")),
        new("ping_pong",
            $"Pooled wakers: the same {WorkloadSizes.PingPongPairs} pairs × {N(WorkloadSizes.PingPongRoundTrips)} round trips, the ball carrying the next inbox: `TaskCompletionSource` on the ThreadPool vs " +
            "a freshly rented `PooledValueTaskSource<T>` per hop on ours vs DotNext.Threading's `ValueTaskCompletionSource<T>` (one per side, reset and re-armed per hop) on the ThreadPool. " +
            "Also managed bytes allocated per round trip, process-wide (`GC.GetTotalAllocatedBytes`) and including each run's setup (200 loops started), so below 1 B/round trip means nothing per hop; the ratio counts anything below 1 B as 1 B.",
            PingPongPooled),
        new("skynet",
            $"A {WorkloadSizes.SkynetFanOut}-ary tree of tasks with {N(WorkloadSizes.SkynetLeaves)} leaves (1,111,111 tasks); inner nodes await and sum their children.",
            c => Comparison.TimedWithSynchronizationContextPeer(c, "skynet", s => Verified(SchedulerWorkloads.Skynet(s, WorkloadSizes.SkynetLeaves, WorkloadSizes.SkynetFanOut), SchedulerWorkloads.SkynetExpected(WorkloadSizes.SkynetLeaves), "skynet"))),
        new("fork_join",
            $"fib({WorkloadSizes.FibN}) where every call spawns fib(n-1) as a task, computes fib(n-2) itself and awaits both.",
            c => Comparison.TimedWithSynchronizationContextPeer(c, "fork_join", s => Verified(SchedulerWorkloads.ForkJoin(s, WorkloadSizes.FibN), SchedulerWorkloads.FibExpected(WorkloadSizes.FibN), "fork_join"))),
        new("pipe_schedule",
            $"{WorkloadSizes.PipeChains} chains of `PipeScheduler.Schedule` callbacks, each scheduling the next, {N(WorkloadSizes.PipeHopsPerChain)} per chain: " +
            "`PipeScheduler.ThreadPool` vs ours (`scheduler.PipeScheduler`) vs Pipelines.Sockets.Unofficial's `DedicatedThreadPoolPipeScheduler` (one worker per core; its spill-to-ThreadPool queue length of 10 is never reached by 8 chains).",
            PipeSchedule),
        new("wake_latency",
            "A parked worker resumes: a foreign thread completes an awaited `TaskCompletionSource` (asynchronous continuations) 2 ms after the await, when the awaiting side has parked " +
            $"(blocked in the kernel), and the sample is the time until the awaiting code runs: on the ThreadPool vs on ours. {N(ParkedWakeSamples)} samples per round ({N(ParkedWakeSamplesQuick)} with --quick), HdrHistogram percentiles.",
            c => WakeLatency(c, WakeGap.Parked)),
        new("wake_latency",
            "Pooled wakers, parked worker: the same probe awaiting a freshly rented `PooledValueTaskSource<long>` per sample on a worker of ours, vs `TaskCompletionSource` on the ThreadPool, " +
            "vs DotNext.Threading's `ValueTaskCompletionSource<long>` (one, reset per sample) on the ThreadPool.",
            c => WakeLatencyPooled(c, WakeGap.Parked)),
        new("wake_latency",
            $"Pooled wakers, busy gaps: the foreign thread completes 0–50 µs after the await (busy-waited, the same random sequence for all), while the awaiting worker may still spin before parking; " +
            $"{N(BusyWakeSamples)} samples per round ({N(BusyWakeSamplesQuick)} with --quick). Contenders as in the row above.",
            c => WakeLatencyPooled(c, WakeGap.Busy)),
        new("idle_cpu",
            $"Process CPU (ms per second, via getrusage) while {N(PendingAwaiterCount)} tasks sit awaiting never-completed `TaskCompletionSource`s, measured after a 250 ms settle: ThreadPool vs ours. Below 1 ms/s both count as idle (ratio 1.0).",
            IdleCpu),
        new("idle_cpu",
            $"Pooled wakers: the same with {N(PendingAwaiterCount)} async methods awaiting never-completed `PooledValueTaskSource`s on ours, vs `TaskCompletionSource`s on the ThreadPool.",
            IdleCpuPooled),
        new("pending_task_memory",
            $"Bytes allocated per pending awaiter (a `TaskCompletionSource` and the async method awaiting it), parking {N(PendingAwaiterCount)} on a ThreadPool thread vs on a worker of ours.",
            PendingTaskMemory),
        new("pending_task_memory",
            $"Pooled wakers: the same probe with one rented `PooledValueTaskSource` per awaiter on a worker of ours (the pool keeps a few hundred idle sources, so most of the {N(PendingAwaiterCount)} are new objects), " +
            "vs `TaskCompletionSource` on the ThreadPool, vs one DotNext.Threading `ValueTaskCompletionSource` per awaiter on the ThreadPool.",
            PendingTaskMemoryPooled),
        new("echo", EchoSocketDescription, c => Echo(c, EchoTransport.Reactor, "ReactorSocket")),
        new("echo", EchoConnectionDescription, c => Echo(c, EchoTransport.ReactorPipes, "ReactorConnection")),
        new("echo_timeouts", EchoTimeoutsDescription, EchoWithTimeouts),
        new("timers", TimersDescription, Timers),
        new("timer_create_cancel", TimerCreateCancelDescription, TimerCreateCancel),
        new("timer_create_cancel", TimerCreateCancelReusedDescription, TimerCreateCancelReused),
        new("pending_timer_memory", PendingTimerMemoryDescription, PendingTimerMemory),
    ];

    private static Comparison PipeSchedule(CompareContext context)
    {
        var dedicated = new DedicatedThreadPoolPipeScheduler("pipe_schedule peer", Environment.ProcessorCount);
        return Comparison.Timed(
                "pipe_schedule",
                "PipeScheduler.ThreadPool",
                () => PipeSchedulerWorkloads.PipeSchedule(PipeScheduler.ThreadPool, WorkloadSizes.PipeChains, WorkloadSizes.PipeHopsPerChain),
                () => PipeSchedulerWorkloads.PipeSchedule(context.Scheduler.PipeScheduler, WorkloadSizes.PipeChains, WorkloadSizes.PipeHopsPerChain))
            .PeerTimed("DedicatedThreadPoolPipeScheduler", () => PipeSchedulerWorkloads.PipeSchedule(dedicated, WorkloadSizes.PipeChains, WorkloadSizes.PipeHopsPerChain))
            .Owning(dedicated);
    }

    private const int ParkedWakeSamples = 500;
    private const int ParkedWakeSamplesQuick = 150;
    private const int BusyWakeSamples = 4_000;
    private const int BusyWakeSamplesQuick = 1_000;

    private static int WakeSamples(CompareContext context, WakeGap gap) => gap == WakeGap.Parked
        ? (context.Quick ? ParkedWakeSamplesQuick : ParkedWakeSamples)
        : (context.Quick ? BusyWakeSamplesQuick : BusyWakeSamples);

    private static Metric[] WakeLatencyMetrics() => [new("p50", "µs", Better.Lower), new("p99", "µs", Better.Lower)];

    private static Comparison WakeLatency(CompareContext context, WakeGap gap)
    {
        const string What = "wake_latency";
        int samples = WakeSamples(context, gap);
        return new Comparison(What, WakeLatencyMetrics(), variant: "Tasks, parked worker")
            .Baseline("ThreadPool", c => WakeLatencyProbe.Measure(c, TaskScheduler.Default, new TaskCompletionSourceWakeSignal(), samples, gap, What))
            .Ours(c => WakeLatencyProbe.Measure(c, c.Scheduler, new TaskCompletionSourceWakeSignal(), samples, gap, What))
            .WithRounds(warmups: 1, rounds: 5, quickRounds: 2);
    }

    private static Comparison PingPongPooled(CompareContext context)
    {
        const string What = "ping_pong";
        const int Pairs = WorkloadSizes.PingPongPairs;
        const int RoundTrips = WorkloadSizes.PingPongRoundTrips;
        Metric[] metrics = [Metric.Time, new("allocated", "B/round trip", Better.Lower, NoiseFloor: 1.0)];
        return new Comparison(What, metrics, variant: PooledWakers)
            .Baseline("TaskCompletionSource on ThreadPool", CompareContext.TimedWithAllocations(What + " (TaskCompletionSource) on the ThreadPool", () => SchedulerWorkloads.PingPong(TaskScheduler.Default, Pairs, RoundTrips), Pairs * RoundTrips))
            .Ours(CompareContext.TimedWithAllocations(What + " (pooled wakers) on ours", () => WakerPingPongPairs.Pooled(context.Scheduler, Pairs, RoundTrips), Pairs * RoundTrips))
            .Peer(DotNextPeer, CompareContext.TimedWithAllocations(What + " (DotNext) on the ThreadPool", () => WakerPingPongPairs.DotNext(TaskScheduler.Default, Pairs, RoundTrips), Pairs * RoundTrips));
    }

    private static Comparison WakeLatencyPooled(CompareContext context, WakeGap gap)
    {
        const string What = "wake_latency";
        int samples = WakeSamples(context, gap);
        return new Comparison(What, WakeLatencyMetrics(), variant: gap == WakeGap.Parked ? PooledWakers + ", parked worker" : PooledWakers + ", busy gaps")
            .Baseline("TaskCompletionSource on ThreadPool", c => WakeLatencyProbe.Measure(c, TaskScheduler.Default, new TaskCompletionSourceWakeSignal(), samples, gap, What))
            .Ours(c => WakeLatencyProbe.Measure(c, c.Scheduler, new PooledWakeSignal(), samples, gap, What))
            .Peer(DotNextPeer, c => WakeLatencyProbe.Measure(c, TaskScheduler.Default, new DotNextWakeSignal(), samples, gap, What))
            .WithRounds(warmups: 1, rounds: gap == WakeGap.Parked ? 5 : 7, quickRounds: 2);
    }

    private static Comparison IdleCpu(CompareContext context)
    {
        const string What = "idle_cpu";
        TimeSpan settle = TimeSpan.FromMilliseconds(250);
        TimeSpan window = context.Quick ? TimeSpan.FromMilliseconds(500) : TimeSpan.FromSeconds(1);
        return new Comparison(What, [new Metric("CPU", "ms/s", Better.Lower, NoiseFloor: 1.0)], variant: "Tasks")
            .Baseline("ThreadPool", c => [PendingProbes.IdleCpu(c, TaskScheduler.Default, new TaskCompletionSourceAwaiters(PendingAwaiterCount), settle, window, What)])
            .Ours(c => [PendingProbes.IdleCpu(c, c.Scheduler, new TaskCompletionSourceAwaiters(PendingAwaiterCount), settle, window, What)])
            .WithRounds(warmups: 1, rounds: 5, quickRounds: 1);
    }

    private static Comparison IdleCpuPooled(CompareContext context)
    {
        const string What = "idle_cpu";
        TimeSpan settle = TimeSpan.FromMilliseconds(250);
        TimeSpan window = context.Quick ? TimeSpan.FromMilliseconds(500) : TimeSpan.FromSeconds(1);
        return new Comparison(What, [new Metric("CPU", "ms/s", Better.Lower, NoiseFloor: 1.0)], variant: PooledWakers)
            .Baseline("TaskCompletionSource on ThreadPool", c => [PendingProbes.IdleCpu(c, TaskScheduler.Default, new TaskCompletionSourceAwaiters(PendingAwaiterCount), settle, window, What)])
            .Ours(c => [PendingProbes.IdleCpu(c, c.Scheduler, new PooledValueTaskSourceAwaiters(PendingAwaiterCount), settle, window, What)])
            .WithRounds(warmups: 1, rounds: 5, quickRounds: 1);
    }

    private static Comparison PendingTaskMemory(CompareContext context)
    {
        const string What = "pending_task_memory";
        return new Comparison(What, [new Metric("allocated", "bytes/awaiter", Better.Lower)], variant: "Tasks")
            .Baseline("TaskCompletionSource on ThreadPool", c => [PendingProbes.BytesPerAwaiter(c, TaskScheduler.Default, new TaskCompletionSourceAwaiters(PendingAwaiterCount), PendingAwaiterCount, What)])
            .Ours(c => [PendingProbes.BytesPerAwaiter(c, c.Scheduler, new TaskCompletionSourceAwaiters(PendingAwaiterCount), PendingAwaiterCount, What)])
            .WithRounds(warmups: 1, rounds: 3, quickRounds: 1);
    }

    private static Comparison PendingTaskMemoryPooled(CompareContext context)
    {
        const string What = "pending_task_memory";
        return new Comparison(What, [new Metric("allocated", "bytes/awaiter", Better.Lower)], variant: PooledWakers)
            .Baseline("TaskCompletionSource on ThreadPool", c => [PendingProbes.BytesPerAwaiter(c, TaskScheduler.Default, new TaskCompletionSourceAwaiters(PendingAwaiterCount), PendingAwaiterCount, What)])
            .Ours(c => [PendingProbes.BytesPerAwaiter(c, c.Scheduler, new PooledValueTaskSourceAwaiters(PendingAwaiterCount), PendingAwaiterCount, What)])
            .Peer(DotNextPeer, c => [PendingProbes.BytesPerAwaiter(c, TaskScheduler.Default, new DotNextAwaiters(PendingAwaiterCount), PendingAwaiterCount, What)])
            .WithRounds(warmups: 1, rounds: 3, quickRounds: 1);
    }

    private static string N(int value) => value.ToString("N0", CultureInfo.InvariantCulture);

    /// <summary>Fails the run when a workload computes the wrong answer (a lost or doubled task), without adding a wait.</summary>
    private static Task<long> Verified(Task<long> task, long expected, string what) =>
        task.ContinueWith(
            t => t.Result == expected ? t.Result : throw new InvalidOperationException($"{what} returned {t.Result}, expected {expected}."),
            CancellationToken.None,
            TaskContinuationOptions.ExecuteSynchronously,
            TaskScheduler.Default);
}
