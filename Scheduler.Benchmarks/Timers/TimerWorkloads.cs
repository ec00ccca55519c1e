using System.Diagnostics;
using Scheduler.Timers;

namespace Scheduler.Benchmarks.Timers;

/// <summary>The outcome of one delay workload (many concurrent delays, each awaited by its own async method).</summary>
/// <param name="Name">What ran: <c>TimerWheel.DelayAsync</c> or <c>Task.Delay</c>.</param>
/// <param name="Count">How many delays ran concurrently.</param>
/// <param name="WallMilliseconds">Wall-clock time from the first start to the last completion.</param>
/// <param name="CpuMilliseconds">Process CPU time (all threads) over the same span.</param>
/// <param name="BytesAllocated">Bytes allocated by the whole process over the same span (includes each awaiting async method's box).</param>
/// <param name="BytesPerPendingTimer">Bytes allocated on the starting thread to create one pending (not yet awaited) delay.</param>
/// <param name="EarlyFirings">Delays that completed before their requested time as Stopwatch measures it.</param>
/// <param name="LatenessP50Milliseconds">Median of (completion − requested deadline).</param>
/// <param name="LatenessP99Milliseconds">99th percentile of (completion − requested deadline).</param>
public sealed record TimerWorkloadResult(
    string Name,
    int Count,
    double WallMilliseconds,
    double CpuMilliseconds,
    long BytesAllocated,
    double BytesPerPendingTimer,
    int EarlyFirings,
    double LatenessP50Milliseconds,
    double LatenessP99Milliseconds)
{
    /// <summary>Bytes allocated per delay over the whole run.</summary>
    public double BytesPerDelay => Count == 0 ? 0 : (double)BytesAllocated / Count;
}

/// <summary>The same delay workload on the wheel and on <see cref="Task.Delay(TimeSpan)"/>, run back to back.</summary>
public sealed record TimerComparison(TimerWorkloadResult Wheel, TimerWorkloadResult TaskDelay);

/// <summary>One variant of the timeout pattern: arm a timer, then cancel it before it fires.</summary>
/// <param name="Name">The variant.</param>
/// <param name="Operations">Arm+cancel pairs performed.</param>
/// <param name="NanosecondsPerOperation">Wall time per pair, single thread.</param>
/// <param name="BytesPerOperation">Bytes allocated per pair on the calling thread.</param>
public sealed record TimeoutPatternResult(string Name, int Operations, double NanosecondsPerOperation, double BytesPerOperation);

/// <summary>
/// Reusable timer workloads: the BenchmarkDotNet classes next to this one and the <c>compare</c> command's
/// <c>timers</c> row both call these, so the numbers mean the same thing everywhere.
/// </summary>
public static class TimerWorkloads
{
    /// <summary>
    /// Runs <paramref name="count"/> concurrent delays of random length in [1 µs, <paramref name="maxDelay"/>] (default
    /// 1 s) on a <see cref="TimerWheel"/> (1 ms tick) and then the same delays with <see cref="Task.Delay(TimeSpan)"/>.
    /// </summary>
    /// <remarks>
    /// Spread over a second, 100,000 completions stay within what two cores can resume, so lateness measures the
    /// timers; squeezed into a few milliseconds it measures the continuation backlog instead.
    /// </remarks>
    public static TimerComparison CompareDelays(int count = 100_000, TimeSpan? maxDelay = null, int seed = 1)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(count, 1);
        TimeSpan max = maxDelay ?? TimeSpan.FromSeconds(1);
        using var wheel = new TimerWheel();

        // Warm both paths (JIT tiers, pools, ThreadPool threads) so neither pays start-up costs in the measurement.
        RunDelays("warm-up", Math.Min(count, 2_000), max, seed, d => wheel.DelayAsync(d));
        RunDelays("warm-up", Math.Min(count, 2_000), max, seed, d => new ValueTask(Task.Delay(d)));

        TimerWorkloadResult ours = RunDelays("TimerWheel.DelayAsync", count, max, seed, d => wheel.DelayAsync(d)) with
        {
            BytesPerPendingTimer = MeasurePendingBytes(Math.Min(count, 20_000), useWheel: true),
        };
        TimerWorkloadResult bcl = RunDelays("Task.Delay", count, max, seed, d => new ValueTask(Task.Delay(d))) with
        {
            BytesPerPendingTimer = MeasurePendingBytes(Math.Min(count, 20_000), useWheel: false),
        };
        return new TimerComparison(ours, bcl);
    }

    /// <summary>Runs the delay workload once with <paramref name="start"/> (which starts one delay).</summary>
    /// <param name="timeout">
    /// Longest the run may take (default: <paramref name="maxDelay"/> plus two minutes); a delay that never completes
    /// (a lost timer) then fails the run with a <see cref="TimeoutException"/> instead of hanging its caller.
    /// </param>
    public static TimerWorkloadResult RunDelays(string name, int count, TimeSpan maxDelay, int seed, Func<TimeSpan, ValueTask> start, TimeSpan? timeout = null)
    {
        ArgumentNullException.ThrowIfNull(start);
        TimeSpan bound = timeout ?? maxDelay + TimeSpan.FromMinutes(2);
        var random = new Random(seed);
        var delays = new TimeSpan[count];
        for (int i = 0; i < count; i++)
        {
            delays[i] = TimeSpan.FromTicks(random.NextInt64(10, Math.Max(11, maxDelay.Ticks)));
        }

        var lateness = new long[count];
        var tasks = new Task[count];
        int early = 0;

        using var process = Process.GetCurrentProcess();
        TimeSpan cpuBefore = process.TotalProcessorTime;
        long bytesBefore = GC.GetTotalAllocatedBytes(precise: true);
        long wallStart = Stopwatch.GetTimestamp();

        // Started from a ThreadPool thread: no SynchronizationContext, as in library code.
        Task run = Task.Run(() =>
        {
            for (int i = 0; i < count; i++)
            {
                tasks[i] = WaitOne(i);
            }

            return Task.WhenAll(tasks);
        });
        bool finished;
        try
        {
            finished = run.Wait(bound);
        }
        catch (AggregateException)
        {
            finished = true; // rethrown below as itself
        }

        if (!finished)
        {
            int pending = tasks.Count(t => t is null || !t.IsCompleted);
            throw new TimeoutException($"{name}: {pending} of {count} delays (at most {maxDelay.TotalMilliseconds:F0} ms each) had not completed after {bound.TotalSeconds:F0} s.");
        }

        run.GetAwaiter().GetResult(); // rethrows a failed delay as itself

        long wallEnd = Stopwatch.GetTimestamp();
        long bytesAfter = GC.GetTotalAllocatedBytes(precise: true);
        process.Refresh();
        TimeSpan cpu = process.TotalProcessorTime - cpuBefore;

        Array.Sort(lateness);
        return new TimerWorkloadResult(
            name,
            count,
            Stopwatch.GetElapsedTime(wallStart, wallEnd).TotalMilliseconds,
            cpu.TotalMilliseconds,
            bytesAfter - bytesBefore,
            double.NaN,
            early,
            ToMilliseconds(lateness[count / 2]),
            ToMilliseconds(lateness[Math.Min(count - 1, (int)(count * 0.99))]));

        async Task WaitOne(int index)
        {
            TimeSpan delay = delays[index];
            long begin = Stopwatch.GetTimestamp();
            await start(delay);
            long elapsed = Stopwatch.GetTimestamp() - begin;
            long late = elapsed - (long)(delay.Ticks * (Stopwatch.Frequency / (double)TimeSpan.TicksPerSecond));
            lateness[index] = late;
            if (Stopwatch.GetElapsedTime(begin, begin + elapsed) < delay)
            {
                Interlocked.Increment(ref early);
            }
        }
    }

    /// <summary>
    /// Bytes allocated on the calling thread to create one pending delay (30 s, never awaited), averaged over
    /// <paramref name="count"/>. The wheel's are completed by disposing their wheel; Task.Delay's fire after 30 s.
    /// </summary>
    public static double MeasurePendingBytes(int count, bool useWheel)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(count, 1);
        TimeSpan delay = TimeSpan.FromSeconds(30);
        if (useWheel)
        {
            using var wheel = new TimerWheel();
            var pending = new ValueTask[count];
            long before = GC.GetAllocatedBytesForCurrentThread();
            for (int i = 0; i < count; i++)
            {
#pragma warning disable CA2012 // Held pending on purpose: the measurement is what one pending delay costs.
                pending[i] = wheel.DelayAsync(delay);
#pragma warning restore CA2012
            }

            return (GC.GetAllocatedBytesForCurrentThread() - before) / (double)count;
        }
        else
        {
            var pending = new Task[count];
            long before = GC.GetAllocatedBytesForCurrentThread();
            for (int i = 0; i < count; i++)
            {
                pending[i] = Task.Delay(delay);
            }

            return (GC.GetAllocatedBytesForCurrentThread() - before) / (double)count;
        }
    }

    /// <summary>
    /// The timeout pattern (arm a 30 s timeout, cancel it before it fires), single-threaded, in the variants
    /// users write: the wheel's ITimer (fresh and reused), a CancellationTokenSource on the wheel, and the BCL's
    /// CancelAfter (fresh and reused).
    /// </summary>
    /// <param name="operations">Arm+cancel pairs timed per variant.</param>
    /// <param name="warmUp">How long each variant runs before it is timed (default 250 ms, see <see cref="MeasureTimeoutPattern"/>).</param>
    /// <returns>One result per variant, in the order above.</returns>
    public static IReadOnlyList<TimeoutPatternResult> CompareTimeoutPattern(int operations = 200_000, TimeSpan? warmUp = null)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(operations, 1);
        TimeSpan timeout = TimeSpan.FromSeconds(30);
        using var wheel = new TimerWheel();
        using ITimer reused = wheel.CreateTimer(static _ => { }, null, Timeout.InfiniteTimeSpan, Timeout.InfiniteTimeSpan);
        using var reusedCts = new CancellationTokenSource();

        var variants = new (string Name, Action Body)[]
        {
            ("TimerWheel.CreateTimer + Dispose", () => wheel.CreateTimer(static _ => { }, null, timeout, Timeout.InfiniteTimeSpan).Dispose()),
            ("TimerWheel ITimer.Change arm + disarm (reused)", () =>
            {
                reused.Change(timeout, Timeout.InfiniteTimeSpan);
                reused.Change(Timeout.InfiniteTimeSpan, Timeout.InfiniteTimeSpan);
            }),
            ("new CancellationTokenSource(timeout, wheel) + Dispose", () => new CancellationTokenSource(timeout, wheel).Dispose()),
            ("new CancellationTokenSource + CancelAfter + Dispose", () =>
            {
                var cts = new CancellationTokenSource();
                cts.CancelAfter(timeout);
                cts.Dispose();
            }),
            ("CancellationTokenSource.CancelAfter + TryReset (reused)", () =>
            {
                reusedCts.CancelAfter(timeout);
                reusedCts.TryReset();
            }),
        };

        var results = new List<TimeoutPatternResult>();
        foreach ((string name, Action body) in variants)
        {
            results.Add(MeasureTimeoutPattern(name, operations, body, warmUp));
        }

        return results;
    }

    /// <summary>
    /// Times <paramref name="operations"/> runs of <paramref name="body"/> (one arm+cancel pair each) on the calling
    /// thread: wall time and bytes allocated on this thread, per pair. Runs the body for at least
    /// <paramref name="warmUp"/> first (default 250 ms): tiered compilation counts calls and then compiles the final
    /// code in the background after a delay, and a round timed before that measures tier-0 code instead.
    /// </summary>
    public static TimeoutPatternResult MeasureTimeoutPattern(string name, int operations, Action body, TimeSpan? warmUp = null)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(operations, 1);
        ArgumentNullException.ThrowIfNull(body);
        long warmUntil = Stopwatch.GetTimestamp() + (long)((warmUp ?? TimeSpan.FromMilliseconds(250)).TotalSeconds * Stopwatch.Frequency);
        int warmed = 0;
        while (warmed < Math.Min(operations, 10_000) || Stopwatch.GetTimestamp() < warmUntil)
        {
            for (int i = 0; i < 1_000; i++)
            {
                body();
            }

            warmed += 1_000;
        }

        long bytesBefore = GC.GetAllocatedBytesForCurrentThread();
        long start = Stopwatch.GetTimestamp();
        for (int i = 0; i < operations; i++)
        {
            body();
        }

        TimeSpan elapsed = Stopwatch.GetElapsedTime(start);
        long bytes = GC.GetAllocatedBytesForCurrentThread() - bytesBefore;
        return new TimeoutPatternResult(name, operations, elapsed.TotalNanoseconds / operations, bytes / (double)operations);
    }

    private static double ToMilliseconds(long stopwatchUnits) => stopwatchUnits * 1000.0 / Stopwatch.Frequency;
}
