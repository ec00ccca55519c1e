using System.Diagnostics;
using System.Threading.Tasks.Sources;
using Scheduler.Sources;
using Scheduler.Tests.Scheduling;
using Xunit.Abstractions;

namespace Scheduler.Tests.Sources;

/// <summary>Byte-counting tests read process-wide counters, so nothing else may run beside them.</summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class SourcesResourceGroup
{
    public const string Name = "Sources resource measurements";
}

[Collection(SourcesResourceGroup.Name)]
[HoldsUnobservedProbe]
public sealed class SourcesResourceTests(ITestOutputHelper output)
{
    [Fact]
    public void Synchronous_rent_complete_await_cycle_allocates_nothing()
    {
        RunSynchronousCycles(10_000);
        ReadCompleted(RunSynchronousCyclesAsync(10_000));

        long before = GC.GetAllocatedBytesForCurrentThread();
        long sum = RunSynchronousCycles(100_000);
        long afterSync = GC.GetAllocatedBytesForCurrentThread();
        sum += ReadCompleted(RunSynchronousCyclesAsync(100_000));
        long afterAsync = GC.GetAllocatedBytesForCurrentThread();

        sum.Should().BeGreaterThan(0);
        output.WriteLine($"sync: {afterSync - before} B / 100,000 cycles; async: {afterAsync - afterSync} B / 100,000 cycles");
        (afterSync - before).Should().BeLessThan(1024, "100,000 synchronous cycles must not allocate");
        (afterAsync - afterSync).Should().BeLessThan(1024, "an async method awaiting completed rentals must not allocate either");
    }

    [Fact]
    public async Task Cross_thread_cycle_on_the_scheduler_allocates_nothing()
    {
        var scheduler = new WorkStealingTaskScheduler(2);
        await using var disposeScheduler = SchedulerTestHelpers.DisposeWithin(scheduler);
        long bytesPerCycle = await MeasureCrossThreadAsync(work => scheduler.Factory.StartNew(work).Unwrap(), output);
        bytesPerCycle.Should().Be(0);
    }

    [Fact]
    public async Task Cross_thread_cycle_on_the_thread_pool_allocates_nothing()
    {
        long bytesPerCycle = await MeasureCrossThreadAsync(work => Task.Run(work), output);
        bytesPerCycle.Should().Be(0);
    }

    // The result-less source, and the FlowExecutionContext path (awaiter.OnCompleted, which captures the context)
    // under a non-default AsyncLocal: the captured context is reused, never copied, and restoring it allocates nothing.
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task Result_less_and_context_flowing_cycles_allocate_nothing(bool onScheduler)
    {
        var scheduler = new WorkStealingTaskScheduler(2);
        await using var disposeScheduler = SchedulerTestHelpers.DisposeWithin(scheduler);
        var local = new AsyncLocal<string?>();
        Func<Func<Task<long>>, Task<long>> start = onScheduler
            ? work => scheduler.Factory.StartNew(work).Unwrap()
            : work => Task.Run(work);
        object? slot = null;
        bool done = false;

        var producer = new Thread(() =>
        {
            var spinner = new SpinWait();
            while (!Volatile.Read(ref done))
            {
                switch (Interlocked.Exchange(ref slot, null))
                {
                    case PooledValueTaskSource plain:
                        spinner.Reset();
                        plain.TrySetResult();
                        break;
                    case PooledValueTaskSource<int> source:
                        spinner.Reset();
                        source.TrySetResult(1);
                        break;
                    default:
                        spinner.SpinOnce(sleep1Threshold: -1);
                        break;
                }
            }
        })
        { IsBackground = true };
        producer.Start();

        const int WarmUp = 5_000;
        const int Measured = 10_000;
        const int Windows = 3;
        const long NoiseBudget = 32 * 1024;
        long best;
        try
        {
            var windows = new QuietestWindow(Measured);
            best = await start(async () =>
            {
                local.Value = "flows";
                long sum = 0;
                for (int i = 0; i < WarmUp + (Windows * Measured); i++)
                {
                    if (i == WarmUp)
                    {
                        windows.Start();
                    }
                    else if (i > WarmUp)
                    {
                        windows.Cycled();
                    }

                    var plain = PooledValueTaskSource.Rent();
                    ValueTask pending = plain.Task;
                    Volatile.Write(ref slot, plain);
                    await pending;

                    var source = PooledValueTaskSource<int>.Rent();
                    ValueTask<int> task = source.Task;
                    Volatile.Write(ref slot, source);
                    sum += await new ContextFlowingAwaitable<int>(task);
                }

                windows.Cycled();
                windows.Close();
                output.WriteLine($"double cycles: {windows}");
                sum.Should().Be(WarmUp + (Windows * Measured));
                local.Value.Should().Be("flows");
                return windows.BytesPerCycleAbove(NoiseBudget / (double)Measured);
            });
        }
        finally
        {
            Volatile.Write(ref done, true);
            producer.Join();
        }

        best.Should().Be(0);
    }

    [Fact]
    public void Hand_off_to_a_synchronization_context_allocates_nothing_beyond_its_Post()
    {
        // A context whose Post allocates nothing itself: what is left is the waker's side of the hand-off (the claim
        // that keeps a throwing Post from running the continuation twice is pooled).
        var context = new OnePostSynchronizationContext();
        RunContextHandOffCycles(context, 10_000);

        long before = GC.GetAllocatedBytesForCurrentThread();
        long sum = RunContextHandOffCycles(context, 100_000);
        long allocated = GC.GetAllocatedBytesForCurrentThread() - before;

        sum.Should().Be(100_000L * 99_999 / 2);
        output.WriteLine($"{allocated} B / 100,000 context hand-offs");
        allocated.Should().BeLessThan(1024, "a hand-off to a context must not allocate on the waker's side");
    }

    [Fact]
    public async Task Pending_awaiters_cost_under_one_kilobyte_each()
    {
        const int Count = 20_000;
        var scheduler = new WorkStealingTaskScheduler(2);
        await using var disposeScheduler = SchedulerTestHelpers.DisposeWithin(scheduler);
        var sources = new PooledValueTaskSource<int>[Count];
        var awaiters = new Task<int>[Count];
        await scheduler.Factory.StartNew(() =>
        {
            // Warm-up: the first await on a worker initialises lazy runtime state that is not per-awaiter cost.
            var source = PooledValueTaskSource<int>.Rent();
            Task<int> first = AwaitOne(source);
            source.TrySetResult(0);
            return first;
        }).Unwrap();

        long before = GC.GetTotalMemory(forceFullCollection: true);
        await scheduler.Factory.StartNew(() =>
        {
            for (int i = 0; i < Count; i++)
            {
                sources[i] = PooledValueTaskSource<int>.Rent();
                awaiters[i] = AwaitOne(sources[i]);
            }
        });
        long after = GC.GetTotalMemory(forceFullCollection: true);

        awaiters.Should().OnlyContain(t => !t.IsCompleted);
        long perAwaiter = (after - before) / Count;
        output.WriteLine($"{perAwaiter} bytes per pending awaiter (source + async state machine)");
        perAwaiter.Should().BeLessThan(1024);

        int failedCompletions = 0;
        var completer = new Thread(() =>
        {
            for (int i = 0; i < Count; i++)
            {
                if (!sources[i].TrySetResult(i))
                {
                    Interlocked.Increment(ref failedCompletions);
                }
            }
        });
        completer.Start();
        int[] results = await Task.WhenAll(awaiters).WaitAsync(TimeSpan.FromSeconds(20));
        completer.Join();
        failedCompletions.Should().Be(0);
        results.Should().Equal(Enumerable.Range(0, Count));
        GC.KeepAlive(sources);
    }

    [Fact]
    public void Pool_retains_no_more_than_its_cap_after_a_million_rentals()
    {
        var pool = PooledValueTaskSource<BurstProbe>.Pool;
        const int Burst = 100_000;
        var rented = new PooledValueTaskSource<BurstProbe>[Burst];
        int total = 0;
        for (int round = 0; round < 10; round++)
        {
            for (int i = 0; i < Burst; i++)
            {
                rented[i] = PooledValueTaskSource<BurstProbe>.Rent();
            }

            for (int i = 0; i < Burst; i++)
            {
                rented[i].TrySetResult(rented[i].Version, new BurstProbe(i)).Should().BeTrue();
                ReadCompleted(rented[i].Task).Value.Should().Be(i);
                total++;
            }

            pool.Count.Should().BeLessThanOrEqualTo(pool.Capacity);
        }

        total.Should().Be(1_000_000);
        pool.Count.Should().BeGreaterThan(0, "the pool keeps sources up to its cap");
        pool.Capacity.Should().BeLessThan(Burst);
        Array.Clear(rented);
    }

    // The rentals here complete before they are read, so the synchronous read is the awaiter's fast path.
    private static T ReadCompleted<T>(ValueTask<T> task) =>
        task.IsCompleted ? task.Result : throw new InvalidOperationException("Expected a completed ValueTask.");

    private static long RunSynchronousCycles(int count)
    {
        long sum = 0;
        for (int i = 0; i < count; i++)
        {
            var source = PooledValueTaskSource<int>.Rent();
            source.TrySetResult(source.Version, i);
            sum += source.Task.GetAwaiter().GetResult();

            var plain = PooledValueTaskSource.Rent();
            plain.TrySetResult();
            plain.Task.GetAwaiter().GetResult();
        }

        return sum;
    }

    private static async ValueTask<long> RunSynchronousCyclesAsync(int count)
    {
        long sum = 0;
        for (int i = 0; i < count; i++)
        {
            var source = PooledValueTaskSource<int>.Rent();
            source.TrySetResult(i);
            sum += await source.Task;
        }

        return sum;
    }

    private static long s_handOffSum;

    // Registers, completes (the context holds the post), then runs the post: all on this thread, so the thread's
    // allocation counter sees every allocation of the cycle.
    private static long RunContextHandOffCycles(OnePostSynchronizationContext context, int count)
    {
        s_handOffSum = 0;
        SynchronizationContext? previous = SynchronizationContext.Current;
        for (int i = 0; i < count; i++)
        {
            IValueTaskSource<int> source = PooledValueTaskSource<int>.Rent();
            short version = ((PooledValueTaskSource<int>)source).Version;
            SynchronizationContext.SetSynchronizationContext(context);
            try
            {
                source.OnCompleted(
                    static state =>
                    {
                        var completed = (PooledValueTaskSource<int>)state!;
                        s_handOffSum += ((IValueTaskSource<int>)completed).GetResult(completed.Version);
                    },
                    source,
                    version,
                    ValueTaskSourceOnCompletedFlags.UseSchedulingContext);
            }
            finally
            {
                SynchronizationContext.SetSynchronizationContext(previous);
            }

            ((PooledValueTaskSource<int>)source).TrySetResult(i);
            context.RunPost();
        }

        return s_handOffSum;
    }

    private static async Task<int> AwaitOne(PooledValueTaskSource<int> source) => await source.Task;

    /// <summary>Holds one post at a time, without allocating, until <see cref="RunPost"/> runs it on the caller.</summary>
    private sealed class OnePostSynchronizationContext : SynchronizationContext
    {
        private SendOrPostCallback? _callback;
        private object? _state;

        public override void Post(SendOrPostCallback d, object? state)
        {
            _callback = d;
            _state = state;
        }

        public override SynchronizationContext CreateCopy() => this;

        public void RunPost()
        {
            SendOrPostCallback callback = _callback ?? throw new InvalidOperationException("Nothing was posted.");
            object? state = _state;
            _callback = null;
            _state = null;
            callback(state);
        }
    }

    /// <summary>
    /// A consumer loop (started by <paramref name="start"/>) rents, publishes and awaits; a dedicated thread completes.
    /// Returns the process-wide bytes allocated per cycle over the measured window, after a warm-up.
    /// </summary>
    private static async Task<long> MeasureCrossThreadAsync(Func<Func<Task<long>>, Task<long>> start, ITestOutputHelper output)
    {
        const int WarmUp = 5_000;
        const int Measured = 10_000;
        const int Windows = 3;
        const long NoiseBudget = 32 * 1024; // runner threads, tiering, first-time lazy state: generous, far below 1 B/cycle
        PooledValueTaskSource<int>? slot = null;
        bool done = false;

        var producer = new Thread(() =>
        {
            var spinner = new SpinWait();
            while (!Volatile.Read(ref done))
            {
                PooledValueTaskSource<int>? source = Interlocked.Exchange(ref slot, null);
                if (source is null)
                {
                    spinner.SpinOnce(sleep1Threshold: -1);
                    continue;
                }

                spinner.Reset();
                source.TrySetResult(1);
            }
        })
        { IsBackground = true };
        producer.Start();

        try
        {
            return await start(async () =>
            {
                // Several windows, keep the quietest: noise from other threads (runner, ThreadPool thread
                // injection, tiering) is additive and sporadic, a per-cycle allocation would show in every window.
                var windows = new QuietestWindow(Measured);
                long sum = 0;
                for (int i = 0; i < WarmUp + (Windows * Measured); i++)
                {
                    if (i == WarmUp)
                    {
                        windows.Start();
                    }
                    else if (i > WarmUp)
                    {
                        windows.Cycled();
                    }

                    var source = PooledValueTaskSource<int>.Rent();
                    ValueTask<int> task = source.Task;
                    Volatile.Write(ref slot, source);
                    sum += await task;
                }

                windows.Cycled();
                windows.Close();
                output.WriteLine($"cross-thread cycles: {windows}");
                sum.Should().Be(WarmUp + (Windows * Measured));
                return windows.BytesPerCycleAbove(NoiseBudget / (double)Measured);
            });
        }
        finally
        {
            Volatile.Write(ref done, true);
            producer.Join();
        }
    }

    private readonly record struct BurstProbe(int Value);

    /// <summary>Awaits through <see cref="ValueTaskAwaiter{TResult}.OnCompleted"/> (FlowExecutionContext), not the unsafe form async methods use.</summary>
    private readonly struct ContextFlowingAwaitable<T>(ValueTask<T> task) : System.Runtime.CompilerServices.INotifyCompletion
    {
        public bool IsCompleted => task.IsCompleted;

        public ContextFlowingAwaitable<T> GetAwaiter() => this;

        public void OnCompleted(Action continuation) => task.GetAwaiter().OnCompleted(continuation);

        public T GetResult() => task.GetAwaiter().GetResult();
    }
}
