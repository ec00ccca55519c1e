using Scheduler.Benchmarks.Timers;
using Scheduler.Timers;

namespace Scheduler.Benchmarks.Compare;

internal static partial class CompareCatalog
{
    private const int TimerCount = 100_000;

    private static string TimersDescription =>
        $"{N(TimerCount)} concurrent delays of random length in [1 µs, 1 s] (the same seed for both), each awaited by its own async method started on the ThreadPool " +
        "(`TimerWorkloads.RunDelays`): `Task.Delay` vs ours (`TimerWheel.DelayAsync`, 1 ms tick, one wheel for the whole row). Process CPU over the run (10 ms clock ticks), " +
        "managed bytes allocated per delay (process-wide, including each awaiting async method), delays that completed before their requested time as `Stopwatch` measures it " +
        "(the ratio counts 0 as 1), and lateness (completion − deadline) p50/p99.";

    private static Comparison Timers(CompareContext context)
    {
        const string What = "timers";
        TimeSpan maxDelay = TimeSpan.FromSeconds(1);
        var wheel = new TimerWheel();
        Metric[] metrics =
        [
            new("CPU", "ms", Better.Lower),
            new("allocated", "B/delay", Better.Lower),
            new("early firings", "of " + N(TimerCount), Better.Lower, NoiseFloor: 1.0),
            new("lateness p50", "ms", Better.Lower),
            new("lateness p99", "ms", Better.Lower),
        ];
        return new Comparison(What, metrics)
            .Baseline("Task.Delay", _ => Figures(TimerWorkloads.RunDelays("Task.Delay", TimerCount, maxDelay, seed: 1, static d => new ValueTask(Task.Delay(d)))))
            .Ours(_ => Figures(TimerWorkloads.RunDelays("TimerWheel.DelayAsync", TimerCount, maxDelay, seed: 1, d => wheel.DelayAsync(d))))
            .WithRounds(warmups: 1, rounds: 3, quickRounds: 1)
            .Owning(wheel);

        static double[] Figures(TimerWorkloadResult result) =>
            [result.CpuMilliseconds, result.BytesPerDelay, result.EarlyFirings, result.LatenessP50Milliseconds, result.LatenessP99Milliseconds];
    }
}
