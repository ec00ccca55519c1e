namespace Scheduler.Benchmarks.Scheduling;

/// <summary>
/// Problem sizes shared by the BenchmarkDotNet suite and the <c>compare</c> command, so both measure the
/// same thing. Each is sized to take roughly 10–300 ms per run on 2 cores: long enough to dwarf timer
/// and wake-up noise, short enough for many interleaved rounds.
/// </summary>
internal static class WorkloadSizes
{
    /// <summary>spawn_many_local / spawn_many_remote: tasks spawned.</summary>
    public const int SpawnMany = 100_000;

    /// <summary>chained_spawn: length of the chain (each task spawns the next).</summary>
    public const int ChainDepth = 200_000;

    /// <summary>yield_many: tasks.</summary>
    public const int YieldTasks = 200;

    /// <summary>yield_many: <c>await Task.Yield()</c> per task.</summary>
    public const int YieldsPerTask = 1_000;

    /// <summary>ping_pong: pairs of tasks.</summary>
    public const int PingPongPairs = 100;

    /// <summary>ping_pong: round trips per pair.</summary>
    public const int PingPongRoundTrips = 1_000;

    /// <summary>skynet: leaves of the 10-ary tree (1,111,111 tasks in all).</summary>
    public const int SkynetLeaves = 1_000_000;

    /// <summary>skynet: children per node.</summary>
    public const int SkynetFanOut = 10;

    /// <summary>fork_join: n of the fib(n) computed with one spawned task per call.</summary>
    public const int FibN = 24;

    /// <summary>pipe_schedule: concurrent callback chains (kept under the peer's spill-to-ThreadPool queue length of 10).</summary>
    public const int PipeChains = 8;

    /// <summary>pipe_schedule: callbacks per chain (each schedules the next).</summary>
    public const int PipeHopsPerChain = 50_000;
}
