using Scheduler.Benchmarks.Timers;
using Scheduler.Timers;

namespace Scheduler.Benchmarks.Compare;

internal static partial class CompareCatalog
{
    private const int TimerCount = 100_000;
    private const int TimeoutPatternPairs = 1_000_000;
    private const int TimeoutPatternPairsQuick = 200_000;
    private const int PendingTimerCount = 20_000;

    private static string TimersDescription =>
        $"{N(TimerCount)} concurrent delays of random length in [1 µs, 1 s] (the same seed for both), each awaited by its own async method started on the ThreadPool " +
        "(`TimerWorkloads.RunDelays`): `Task.Delay` vs ours (`TimerWheel.DelayAsync`, 1 ms tick, one wheel for the whole row, with its own driver thread) " +
        "and, as a peer, the same on `IoReactor.Timers` (the wheel driven by an otherwise idle reactor's epoll_wait). Process CPU over the run (10 ms clock ticks), " +
        "managed bytes allocated per delay (process-wide, including each awaiting async method), delays that completed before their requested time as `Stopwatch` measures it " +
        "(the ratio counts 0 as 1), and lateness (completion − deadline) p50/p99.";

    private static string TimerCreateCancelDescription =>
        "The timeout pattern on one thread: arm a 30 s timeout and cancel it before it fires; wall time and managed bytes allocated on that thread per arm+cancel pair " +
        $"(`TimerWorkloads.MeasureTimeoutPattern`, {N(TimeoutPatternPairs)} pairs per round, {N(TimeoutPatternPairsQuick)} with --quick, after a warm-up): " +
        "`new CancellationTokenSource()` + `CancelAfter(30 s)` + `Dispose()` vs ours (`wheel.CreateTimer(callback, null, 30 s, infinite)` + `Dispose()`, 1 ms tick, one wheel for the row). " +
        "A 30 s arm of ours reads no clock: its deadline is measured from the driver's reading when it takes the arm in (never early, at most ~4 ms late); `CancelAfter` reads the coarse `Environment.TickCount64`. " +
        "A new timer of ours waits for its first reconcile in its thread's nursery (a 256-slot ring filled with plain stores, no atomic operation): the thread reconciles a full ring itself (inside the measured time) when the wheel lock is free, " +
        "and the driver thread reconciles whatever waits longer than 4 ms. The arm is a plain store of the timer's intent word; `Dispose` of a timer still waiting to be reconciled is a plain store.";

    private static string TimerCreateCancelReusedDescription =>
        "The same pattern with one long-lived timer per side, nothing allocated per pair: `CancelAfter(30 s)` + `TryReset()` on one `CancellationTokenSource` " +
        "vs `ITimer.Change(30 s, infinite)` + `Change(infinite, infinite)` on one wheel timer: two plain stores and loads while the timer waits to be reconciled (no atomic operation; a push once per reconcile).";

    private static string PendingTimerMemoryDescription =>
        $"Managed bytes allocated on the calling thread per pending 30 s delay, {N(PendingTimerCount)} created back to back and never awaited (`TimerWorkloads.MeasurePendingBytes`): " +
        "`Task.Delay` (its promise and timer) vs ours (`TimerWheel.DelayAsync`: a 40-byte slot in a 64-slot chunk of the wheel's delay slab, so a fresh wheel per round " +
        "grows its slab by a chunk every 64 delays). The wheels of ours are disposed after each round; the `Task.Delay` timers expire 30 s later.";

    private static Comparison TimerCreateCancel(CompareContext context)
    {
        const string What = "timer_create_cancel";
        TimeSpan timeout = TimeSpan.FromSeconds(30);
        int pairs = context.Quick ? TimeoutPatternPairsQuick : TimeoutPatternPairs;
        var wheel = new TimerWheel();
        return new Comparison(What, TimeoutPatternMetrics(), variant: "new timer per pair")
            .Baseline("new CancellationTokenSource + CancelAfter", _ => Figures(TimerWorkloads.MeasureTimeoutPattern(What, pairs, () =>
            {
                var cts = new CancellationTokenSource();
                cts.CancelAfter(timeout);
                cts.Dispose();
            })))
            .Ours(_ => Figures(TimerWorkloads.MeasureTimeoutPattern(What, pairs, () => wheel.CreateTimer(static _ => { }, null, timeout, Timeout.InfiniteTimeSpan).Dispose())))
            .WithRounds(warmups: 1, rounds: 7, quickRounds: 3)
            .Owning(wheel);
    }

    private static Comparison TimerCreateCancelReused(CompareContext context)
    {
        const string What = "timer_create_cancel";
        TimeSpan timeout = TimeSpan.FromSeconds(30);
        int pairs = context.Quick ? TimeoutPatternPairsQuick : TimeoutPatternPairs;
        var wheel = new TimerWheel();
        ITimer timer = wheel.CreateTimer(static _ => { }, null, Timeout.InfiniteTimeSpan, Timeout.InfiniteTimeSpan);
        var cts = new CancellationTokenSource();
        return new Comparison(What, TimeoutPatternMetrics(), variant: "reused timer")
            .Baseline("CancelAfter + TryReset", _ => Figures(TimerWorkloads.MeasureTimeoutPattern(What, pairs, () =>
            {
                cts.CancelAfter(timeout);
                cts.TryReset();
            })))
            .Ours(_ => Figures(TimerWorkloads.MeasureTimeoutPattern(What, pairs, () =>
            {
                timer.Change(timeout, Timeout.InfiniteTimeSpan);
                timer.Change(Timeout.InfiniteTimeSpan, Timeout.InfiniteTimeSpan);
            })))
            .WithRounds(warmups: 1, rounds: 7, quickRounds: 3)
            .Owning(timer)
            .Owning(cts)
            .Owning(wheel);
    }

    private static Comparison PendingTimerMemory(CompareContext context) =>
        new Comparison("pending_timer_memory", [new Metric("allocated", "B/pending timer", Better.Lower)])
            .Baseline("Task.Delay", _ => [TimerWorkloads.MeasurePendingBytes(PendingTimerCount, useWheel: false)])
            .Ours(_ => [TimerWorkloads.MeasurePendingBytes(PendingTimerCount, useWheel: true)])
            .WithRounds(warmups: 1, rounds: 3, quickRounds: 1);

    private static Metric[] TimeoutPatternMetrics() =>
        [new("arm+cancel", "ns", Better.Lower), new("allocated", "B/pair", Better.Lower, NoiseFloor: 1.0)];

    private static double[] Figures(TimeoutPatternResult result) => [result.NanosecondsPerOperation, result.BytesPerOperation];

    private static Comparison Timers(CompareContext context)
    {
        const string What = "timers";
        TimeSpan maxDelay = TimeSpan.FromSeconds(1);
        var wheel = new TimerWheel();
        var reactor = new Scheduler.IO.IoReactor(context.Scheduler);
        TimerWheel reactorWheel = reactor.Timers;
        Metric[] metrics =
        [
            new("CPU", "ms", Better.Lower),
            new("allocated", "B/delay", Better.Lower),
            new("early firings", "of " + N(TimerCount), Better.Lower, NoiseFloor: 1.0),
            new("lateness p50", "ms", Better.Lower),
            new("lateness p99", "ms", Better.Lower),
        ];
        return new Comparison(What, metrics)
            .Baseline("Task.Delay", c => Figures(TimerWorkloads.RunDelays("Task.Delay", TimerCount, maxDelay, seed: 1, static d => new ValueTask(Task.Delay(d)), c.RunTimeout)))
            .Ours(c => Figures(TimerWorkloads.RunDelays("TimerWheel.DelayAsync", TimerCount, maxDelay, seed: 1, d => wheel.DelayAsync(d), c.RunTimeout)))
            .Peer("ours, IoReactor.Timers", c => Figures(TimerWorkloads.RunDelays("IoReactor.Timers.DelayAsync", TimerCount, maxDelay, seed: 1, d => reactorWheel.DelayAsync(d), c.RunTimeout)))
            .WithRounds(warmups: 1, rounds: 3, quickRounds: 1)
            .Owning(wheel)
            .Owning(reactor);

        static double[] Figures(TimerWorkloadResult result) =>
            [result.CpuMilliseconds, result.BytesPerDelay, result.EarlyFirings, result.LatenessP50Milliseconds, result.LatenessP99Milliseconds];
    }
}
