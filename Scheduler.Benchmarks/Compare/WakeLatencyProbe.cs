using System.Diagnostics;
using HdrHistogram;

namespace Scheduler.Benchmarks.Compare;

/// <summary>When the probe's foreign thread completes the awaitable, counted from the moment the awaiter armed it.</summary>
internal enum WakeGap
{
    /// <summary>2 ms later: the awaiting side has long gone idle and parked (blocked in the kernel). The pattern.</summary>
    Parked,

    /// <summary>0–50 µs later (busy-waited, random, the same sequence for every contender): workers may still be spinning.</summary>
    Busy,
}

/// <summary>
/// wake_latency: the time from a foreign thread completing an awaitable to the awaiting continuation running on the
/// scheduler under test, with the completion coming either after the awaiting worker parked (<see cref="WakeGap.Parked"/>)
/// or while it may still spin (<see cref="WakeGap.Busy"/>).
/// </summary>
/// <remarks>
/// The two are kept apart on purpose. Mixed in one run (as an earlier version of this probe did: a 1 ms sleep every 8th
/// sample), the kernel places the worker that the sleeping firer wakes on the firer's own CPU, and the busy-waiting firer
/// then shares that CPU with it for the samples that follow, so the mix measured the co-location rather than either
/// scenario (see docs/scheduling.md, "Wake latency").
/// </remarks>
internal static class WakeLatencyProbe
{
    private const int MaxBusyGapMicroseconds = 50;
    private const int ParkedGapMilliseconds = 2;

    /// <summary>Returns the median (p50) and p99 latency in microseconds over <paramref name="samples"/> wake-ups.</summary>
    public static double[] Measure(CompareContext context, TaskScheduler scheduler, WakeSignal signal, int samples, WakeGap gap, string what)
    {
        ArgumentNullException.ThrowIfNull(context);
        var run = new Run(signal, samples, gap);
        var firer = new Thread(static state => ((Run)state!).FireLoop()) { IsBackground = true, Name = "wake_latency firer" };
        firer.UnsafeStart(run);
        try
        {
            Task awaiter = Task.Factory.StartNew(static state => ((Run)state!).AwaitLoop(), run, CancellationToken.None, TaskCreationOptions.None, scheduler).Unwrap();
            context.Wait(awaiter, what);
        }
        finally
        {
            run.Stop();
            firer.Join();
        }

        return [run.Histogram.GetValueAtPercentile(50) / 1000.0, run.Histogram.GetValueAtPercentile(99) / 1000.0];
    }

    private sealed class Run(WakeSignal signal, int samples, WakeGap gap)
    {
        private const long HighestNanoseconds = 60_000_000_000;
        private static readonly double s_nanosecondsPerTick = 1e9 / Stopwatch.Frequency;
        private int _armed = -1;
        private volatile bool _stopped;

        public LongHistogram Histogram { get; } = new(HighestNanoseconds, 3);

        public void Stop() => _stopped = true;

        public async Task AwaitLoop()
        {
            try
            {
                for (int i = 0; i < samples; i++)
                {
                    ValueTask<long> fired = signal.Arm();
                    Volatile.Write(ref _armed, i);
                    long firedAt = await fired;
                    long nanoseconds = (long)((Stopwatch.GetTimestamp() - firedAt) * s_nanosecondsPerTick);
                    Histogram.RecordValue(Math.Clamp(nanoseconds, 0, HighestNanoseconds));
                }
            }
            finally
            {
                Stop();
            }
        }

        public void FireLoop()
        {
            var random = new Random(6); // the same gaps for every contender
            for (int i = 0; i < samples; i++)
            {
                var spinner = default(SpinWait);
                while (Volatile.Read(ref _armed) != i)
                {
                    if (_stopped)
                    {
                        return;
                    }

                    spinner.SpinOnce(sleep1Threshold: -1);
                }

                if (gap == WakeGap.Parked)
                {
                    Thread.Sleep(ParkedGapMilliseconds);
                }
                else
                {
                    BusyWait(random.Next(0, MaxBusyGapMicroseconds));
                }

                signal.Fire(Stopwatch.GetTimestamp());
            }
        }

        private static void BusyWait(int microseconds)
        {
            long until = Stopwatch.GetTimestamp() + (microseconds * Stopwatch.Frequency / 1_000_000);
            while (Stopwatch.GetTimestamp() < until)
            {
                Thread.SpinWait(10);
            }
        }
    }
}
