using System.Threading.Tasks.Sources;
using BenchmarkDotNet.Attributes;
using DotNext.Threading.Tasks;
using Scheduler.Sources;

namespace Scheduler.Benchmarks.Sources;

/// <summary>
/// Rent (or create) → complete → await, completed before the await (the awaiter's synchronous fast path), per
/// operation: our pooled source against <see cref="TaskCompletionSource{TResult}"/>, a plain reused
/// <see cref="ManualResetValueTaskSourceCore{TResult}"/> source, and DotNext's <see cref="ValueTaskCompletionSource{T}"/>.
/// </summary>
[MemoryDiagnoser]
public class WakerThroughputBenchmarks
{
    private const int Operations = 1_000;

    private readonly PlainSource _plain = new();
    private readonly ValueTaskCompletionSource<int> _dotNext = new(runContinuationsAsynchronously: true);

    [Benchmark(Baseline = true, OperationsPerInvoke = Operations)]
    public async Task<long> TaskCompletionSource()
    {
        long sum = 0;
        for (int i = 0; i < Operations; i++)
        {
            var source = new TaskCompletionSource<int>(TaskCreationOptions.RunContinuationsAsynchronously);
            source.TrySetResult(i);
            sum += await source.Task;
        }

        return sum;
    }

    [Benchmark(OperationsPerInvoke = Operations)]
    public async Task<long> PooledValueTaskSource()
    {
        long sum = 0;
        for (int i = 0; i < Operations; i++)
        {
            var source = PooledValueTaskSource<int>.Rent();
            source.TrySetResult(source.Version, i);
            sum += await source.Task;
        }

        return sum;
    }

    [Benchmark(OperationsPerInvoke = Operations)]
    public async Task<long> ManualResetValueTaskSourceCore()
    {
        long sum = 0;
        for (int i = 0; i < Operations; i++)
        {
            _plain.Reset();
            _plain.SetResult(i);
            sum += await _plain.Task;
        }

        return sum;
    }

    [Benchmark(OperationsPerInvoke = Operations)]
    public async Task<long> DotNextValueTaskCompletionSource()
    {
        long sum = 0;
        for (int i = 0; i < Operations; i++)
        {
            _dotNext.Reset();
            ValueTask<int> task = _dotNext.CreateTask(Timeout.InfiniteTimeSpan, CancellationToken.None);
            _dotNext.TrySetResult(i);
            sum += await task;
        }

        return sum;
    }

    /// <summary>The textbook reusable source: one instance, reset before each use (no pool, no owner dispatch).</summary>
    private sealed class PlainSource : IValueTaskSource<int>
    {
        private ManualResetValueTaskSourceCore<int> _core = new() { RunContinuationsAsynchronously = true };

        public ValueTask<int> Task => new(this, _core.Version);

        public void Reset() => _core.Reset();

        public void SetResult(int value) => _core.SetResult(value);

        public int GetResult(short token) => _core.GetResult(token);

        public ValueTaskSourceStatus GetStatus(short token) => _core.GetStatus(token);

        public void OnCompleted(Action<object?> continuation, object? state, short token, ValueTaskSourceOnCompletedFlags flags) =>
            _core.OnCompleted(continuation, state, token, flags);
    }
}
