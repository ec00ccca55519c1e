using System.Diagnostics;
using DotNext.Threading.Tasks;
using HdrHistogram;
using Scheduler.Sources;

namespace Scheduler.Benchmarks.Sources;

/// <summary>Wake-up latency percentiles, in microseconds.</summary>
public readonly record struct WakeLatency(double P50Microseconds, double P99Microseconds, double MeanMicroseconds, int Samples);

/// <summary>
/// Waker workloads of the BenchmarkDotNet suites in this folder. The <c>compare</c> command's pooled-wakers rows do
/// not run these: they use <see cref="WakerPingPongPairs"/> (many pairs, the ball carrying the next inbox) and the
/// probes in Compare (<c>WakeLatencyProbe</c>: a 2 ms parked gap; <c>PendingProbes</c>), so figures from the two differ.
/// Every method runs one measurement and returns its figure; warm-up, rounds and medians are the caller's job.
/// </summary>
/// <remarks>
/// "Where" parameters take a <see cref="WorkStealingTaskScheduler"/>, or null for the .NET ThreadPool: the async
/// loops start there (<c>scheduler.Factory.StartNew</c> or <c>Task.Run</c>), so continuations resume there.
/// </remarks>
public static class WakerWorkloads
{
    /// <summary>
    /// <c>ping_pong</c>, pooled wakers: two async loops hand a ball back and forth <paramref name="roundTrips"/> times,
    /// each side awaiting a freshly rented <see cref="PooledValueTaskSource{T}"/> that the other side completes.
    /// </summary>
    /// <returns>Elapsed wall-clock time for all round trips.</returns>
    public static Task<TimeSpan> PingPongPooledAsync(WorkStealingTaskScheduler? scheduler, int roundTrips) =>
        PingPongAsync(scheduler, roundTrips, new PooledMailbox(), new PooledMailbox());

    /// <summary><c>ping_pong</c> with a new <see cref="TaskCompletionSource{TResult}"/> (<c>RunContinuationsAsynchronously</c>) per hand-off: the BCL baseline.</summary>
    /// <returns>Elapsed wall-clock time for all round trips.</returns>
    public static Task<TimeSpan> PingPongTaskCompletionSourceAsync(WorkStealingTaskScheduler? scheduler, int roundTrips) =>
        PingPongAsync(scheduler, roundTrips, new TaskCompletionSourceMailbox(), new TaskCompletionSourceMailbox());

    /// <summary><c>ping_pong</c> with DotNext.Threading's <see cref="ValueTaskCompletionSource{T}"/>, one reused (reset) source per side: the peer.</summary>
    /// <returns>Elapsed wall-clock time for all round trips.</returns>
    public static Task<TimeSpan> PingPongDotNextAsync(WorkStealingTaskScheduler? scheduler, int roundTrips) =>
        PingPongAsync(scheduler, roundTrips, new DotNextMailbox(), new DotNextMailbox());

    /// <summary>
    /// <c>wake_latency</c>, ours: an async loop on a worker of <paramref name="scheduler"/> awaits a pooled waker; a
    /// foreign thread waits ~1 ms (so the worker is idle, normally parked), stamps the time and completes it. The sample
    /// is the time from that stamp to the continuation running on the worker.
    /// </summary>
    public static WakeLatency MeasureWakeLatencyPooled(WorkStealingTaskScheduler scheduler, int samples)
    {
        ArgumentNullException.ThrowIfNull(scheduler);
        var slot = new Slot<PooledValueTaskSource<long>>();
        return MeasureWakeLatency(
            samples,
            histogram => Start(scheduler, async () =>
            {
                for (int i = 0; i < samples; i++)
                {
                    var source = PooledValueTaskSource<long>.Rent();
                    ValueTask<long> task = source.Task;
                    slot.Publish(source);
                    long stamped = await task;
                    histogram.RecordValue(Stopwatch.GetTimestamp() - stamped);
                }
            }),
            () => slot.Take().TrySetResult(Stopwatch.GetTimestamp()));
    }

    /// <summary><c>wake_latency</c>, baseline: the same pattern with <see cref="TaskCompletionSource{TResult}"/> awaited on the ThreadPool.</summary>
    public static WakeLatency MeasureWakeLatencyTaskCompletionSource(int samples)
    {
        var slot = new Slot<TaskCompletionSource<long>>();
        return MeasureWakeLatency(
            samples,
            histogram => Task.Run(async () =>
            {
                for (int i = 0; i < samples; i++)
                {
                    var source = new TaskCompletionSource<long>(TaskCreationOptions.RunContinuationsAsynchronously);
                    slot.Publish(source);
                    long stamped = await source.Task;
                    histogram.RecordValue(Stopwatch.GetTimestamp() - stamped);
                }
            }),
            () => slot.Take().TrySetResult(Stopwatch.GetTimestamp()));
    }

    /// <summary>
    /// <c>pending_task_memory</c>, ours: bytes of managed heap per async method awaiting a pooled waker on a worker of
    /// <paramref name="scheduler"/> (the source plus the state machine), measured with full collections.
    /// </summary>
    public static double PendingAwaiterBytesPooled(WorkStealingTaskScheduler scheduler, int count)
    {
        ArgumentNullException.ThrowIfNull(scheduler);
        var sources = new PooledValueTaskSource<int>[count];
        var awaiters = new Task[count];
        long before = GC.GetTotalMemory(forceFullCollection: true);
        scheduler.Factory.StartNew(() =>
        {
            for (int i = 0; i < count; i++)
            {
                sources[i] = PooledValueTaskSource<int>.Rent();
                awaiters[i] = AwaitAsync(sources[i].Task);
            }
        }).Wait();
        long after = GC.GetTotalMemory(forceFullCollection: true);

        foreach (PooledValueTaskSource<int> source in sources)
        {
            source.TrySetResult(0);
        }

        Task.WaitAll(awaiters);
        return (after - before) / (double)count;

        static async Task AwaitAsync(ValueTask<int> task) => await task;
    }

    /// <summary><c>pending_task_memory</c>, baseline: bytes per async method awaiting a <see cref="TaskCompletionSource{TResult}"/> on the ThreadPool.</summary>
    public static double PendingAwaiterBytesTaskCompletionSource(int count)
    {
        var sources = new TaskCompletionSource<int>[count];
        var awaiters = new Task[count];
        long before = GC.GetTotalMemory(forceFullCollection: true);
        Task.Run(() =>
        {
            for (int i = 0; i < count; i++)
            {
                sources[i] = new TaskCompletionSource<int>(TaskCreationOptions.RunContinuationsAsynchronously);
                awaiters[i] = AwaitAsync(sources[i].Task);
            }
        }).Wait();
        long after = GC.GetTotalMemory(forceFullCollection: true);

        foreach (TaskCompletionSource<int> source in sources)
        {
            source.TrySetResult(0);
        }

        Task.WaitAll(awaiters);
        return (after - before) / (double)count;

        static async Task AwaitAsync(Task<int> task) => await task;
    }

    private static Task Start(WorkStealingTaskScheduler? scheduler, Func<Task> loop) =>
        scheduler is null ? Task.Run(loop) : scheduler.Factory.StartNew(loop).Unwrap();

    private static WakeLatency MeasureWakeLatency(int samples, Func<LongHistogram, Task> startAwaiter, Action stampAndComplete)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(samples);
        var histogram = new LongHistogram(TimeStamp.Seconds(10), 3);
        Task awaiter = startAwaiter(histogram);

        // The foreign thread: let the awaiter go idle, then complete. Only it and the awaiter touch the histogram's
        // stamps, one sample at a time, so the histogram needs no lock.
        var completer = new Thread(() =>
        {
            for (int i = 0; i < samples; i++)
            {
                Thread.Sleep(1);
                stampAndComplete();
            }
        })
        { IsBackground = true, Name = "wake_latency completer" };
        completer.Start();
        completer.Join();
        awaiter.Wait();

        double toMicros = 1_000_000.0 / Stopwatch.Frequency;
        return new WakeLatency(
            histogram.GetValueAtPercentile(50) * toMicros,
            histogram.GetValueAtPercentile(99) * toMicros,
            histogram.GetMean() * toMicros,
            (int)histogram.TotalCount);
    }

    private static async Task<TimeSpan> PingPongAsync(WorkStealingTaskScheduler? scheduler, int roundTrips, IMailbox ping, IMailbox pong)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(roundTrips);
        var stopwatch = Stopwatch.StartNew();

        // Each side re-arms its own mailbox before waking the other, so a hand-off never finds the peer unarmed.
        Task server = Start(scheduler, async () =>
        {
            ValueTask<bool> next = pong.Arm();
            for (int i = 0; i < roundTrips; i++)
            {
                await next;
                next = pong.Arm();
                ping.Deliver();
            }
        });
        Task client = Start(scheduler, async () =>
        {
            for (int i = 0; i < roundTrips; i++)
            {
                ValueTask<bool> next = ping.Arm();
                pong.Deliver();
                await next;
            }
        });

        await Task.WhenAll(server, client);
        return stopwatch.Elapsed;
    }

    /// <summary>A one-slot hand-off between one awaiting side (Arm, then await) and one delivering side.</summary>
    private interface IMailbox
    {
        ValueTask<bool> Arm();

        void Deliver();
    }

    private sealed class PooledMailbox : IMailbox
    {
        private readonly Slot<PooledValueTaskSource<bool>> _slot = new();

        public ValueTask<bool> Arm()
        {
            var source = PooledValueTaskSource<bool>.Rent();
            ValueTask<bool> task = source.Task;
            _slot.Publish(source);
            return task;
        }

        public void Deliver() => _slot.Take().TrySetResult(true);
    }

    private sealed class TaskCompletionSourceMailbox : IMailbox
    {
        private readonly Slot<TaskCompletionSource<bool>> _slot = new();

        public ValueTask<bool> Arm()
        {
            var source = new TaskCompletionSource<bool>(TaskCreationOptions.RunContinuationsAsynchronously);
            _slot.Publish(source);
            return new ValueTask<bool>(source.Task);
        }

        public void Deliver() => _slot.Take().TrySetResult(true);
    }

    private sealed class DotNextMailbox : IMailbox
    {
        private readonly ValueTaskCompletionSource<bool> _source = new(runContinuationsAsynchronously: true);
        private readonly Slot<ValueTaskCompletionSource<bool>> _slot = new();

        public ValueTask<bool> Arm()
        {
            // The previous task was consumed (awaited) before we re-arm, which is when DotNext allows a reset.
            _source.Reset();
            ValueTask<bool> task = _source.CreateTask(Timeout.InfiniteTimeSpan, CancellationToken.None);
            _slot.Publish(_source);
            return task;
        }

        public void Deliver() => _slot.Take().TrySetResult(true);
    }

    /// <summary>A single-item hand-off: the consumer spins (without sleeping) until the producer has published.</summary>
    private sealed class Slot<T>
        where T : class
    {
        private T? _item;

        public void Publish(T item) => Volatile.Write(ref _item, item);

        public T Take()
        {
            var spinner = new SpinWait();
            while (true)
            {
                T? item = Interlocked.Exchange(ref _item, null);
                if (item is not null)
                {
                    return item;
                }

                spinner.SpinOnce(sleep1Threshold: -1);
            }
        }
    }
}
