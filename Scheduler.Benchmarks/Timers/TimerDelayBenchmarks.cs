using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Engines;
using Scheduler.Timers;

namespace Scheduler.Benchmarks.Timers;

/// <summary>
/// 100,000 concurrent delays (random, up to 10 ms), each awaited by its own async method (the same wrapper for
/// both): the wheel's pooled DelayAsync against Task.Delay. Allocated bytes include each awaiting method's box, and
/// for the wheel the chunks its delay slab grows by until it holds the 100,000 pending at once (then none).
/// Lateness, early firings and process CPU come from <see cref="TimerWorkloads.RunDelays"/> (the compare command's
/// timers row, with delays up to 1 s rather than 10 ms). Task.Delay truncates a delay to whole milliseconds, so the
/// ~10% of these delays below 1 ms complete synchronously on its side (no timer, no awaiting box): the baseline does
/// less work here than the wheel does.
/// </summary>
[MemoryDiagnoser]
[SimpleJob(RunStrategy.Monitoring, launchCount: 1, warmupCount: 1, iterationCount: 5)]
public class TimerDelayBenchmarks
{
    private const int Count = 100_000;
    private readonly TimeSpan[] _delays = new TimeSpan[Count];
    private readonly Task[] _tasks = new Task[Count];
    private TimerWheel _wheel = null!;

    [GlobalSetup]
    public void Setup()
    {
        _wheel = new TimerWheel();
        var random = new Random(1);
        for (int i = 0; i < Count; i++)
        {
            _delays[i] = TimeSpan.FromTicks(random.Next(10, 100_000));
        }
    }

    [GlobalCleanup]
    public void Cleanup() => _wheel.Dispose();

    [Benchmark(Baseline = true, OperationsPerInvoke = Count)]
    public Task TaskDelay()
    {
        for (int i = 0; i < Count; i++)
        {
            _tasks[i] = AwaitOne(_delays[i]);
        }

        return Task.WhenAll(_tasks);

        static async Task AwaitOne(TimeSpan delay) => await Task.Delay(delay);
    }

    [Benchmark(OperationsPerInvoke = Count)]
    public Task WheelDelayAsync()
    {
        for (int i = 0; i < Count; i++)
        {
            _tasks[i] = AwaitOne(_wheel, _delays[i]);
        }

        return Task.WhenAll(_tasks);

        static async Task AwaitOne(TimerWheel wheel, TimeSpan delay) => await wheel.DelayAsync(delay);
    }
}

/// <summary>
/// Steady state: one async loop awaiting 1 ms delays back to back. The wheel's target is 0 B per delay (the loop's
/// own async box, amortised over the loop, shows as a few bytes). 1 ms because Task.Delay truncates a
/// sub-millisecond delay to zero and completes synchronously.
/// </summary>
[MemoryDiagnoser]
[SimpleJob(RunStrategy.Monitoring, launchCount: 1, warmupCount: 1, iterationCount: 5)]
public class TimerSteadyStateBenchmarks
{
    private const int Delays = 100;
    private static readonly TimeSpan s_delay = TimeSpan.FromMilliseconds(1);
    private TimerWheel _wheel = null!;

    [GlobalSetup]
    public void Setup() => _wheel = new TimerWheel();

    [GlobalCleanup]
    public void Cleanup() => _wheel.Dispose();

    [Benchmark(Baseline = true, OperationsPerInvoke = Delays)]
    public async Task TaskDelay()
    {
        for (int i = 0; i < Delays; i++)
        {
            await Task.Delay(s_delay);
        }
    }

    [Benchmark(OperationsPerInvoke = Delays)]
    public async Task WheelDelayAsync()
    {
        for (int i = 0; i < Delays; i++)
        {
            await _wheel.DelayAsync(s_delay);
        }
    }
}

/// <summary>Memory per pending timer: bytes allocated to create one pending 30 s delay (B/op).</summary>
[MemoryDiagnoser]
[SimpleJob(RunStrategy.Monitoring, launchCount: 1, warmupCount: 1, iterationCount: 5)]
public class PendingTimerMemoryBenchmarks
{
    private const int Count = 10_000;
    private static readonly TimeSpan s_delay = TimeSpan.FromSeconds(30);
    private readonly Task[] _tasks = new Task[Count];
    private readonly ValueTask[] _valueTasks = new ValueTask[Count];
    private TimerWheel? _wheel;

    [IterationSetup(Target = nameof(WheelDelayAsync))]
    public void CreateWheel() => _wheel = new TimerWheel();

    [IterationCleanup(Target = nameof(WheelDelayAsync))]
    public void DisposeWheel() => _wheel?.Dispose();

    [Benchmark(Baseline = true, OperationsPerInvoke = Count)]
    public void TaskDelay()
    {
        for (int i = 0; i < Count; i++)
        {
            _tasks[i] = Task.Delay(s_delay);
        }
    }

    [Benchmark(OperationsPerInvoke = Count)]
    public void WheelDelayAsync()
    {
        for (int i = 0; i < Count; i++)
        {
#pragma warning disable CA2012 // Held pending on purpose: the measurement is what one pending delay costs.
            _valueTasks[i] = _wheel!.DelayAsync(s_delay);
#pragma warning restore CA2012
        }
    }
}
