using DotNext.Threading.Tasks;
using Scheduler.Sources;

namespace Scheduler.Benchmarks.Compare;

/// <summary>
/// Pending awaiters on pooled wakers: one rented <see cref="PooledValueTaskSource"/> per awaiter, awaited by an async
/// method. Thousands pending at once outgrow the pool (it keeps a few hundred idle sources), so most rentals are new
/// objects: what is weighed is the footprint of a pending awaiter, not the pool's recycling.
/// </summary>
internal sealed class PooledValueTaskSourceAwaiters(int count) : PendingAwaiters
{
    private readonly PooledValueTaskSource[] _sources = new PooledValueTaskSource[count];
    private readonly short[] _versions = new short[count];
    private readonly Task[] _awaiters = new Task[count];

    public override void Park()
    {
        for (int i = 0; i < _sources.Length; i++)
        {
            var source = PooledValueTaskSource.Rent();
            _sources[i] = source;
            _versions[i] = source.Version;
            _awaiters[i] = AwaitOne(source.Task);
        }
    }

    public override Task ReleaseAsync()
    {
        // Version-checked: a resumed awaiter hands its source back to the pool at once.
        for (int i = 0; i < _sources.Length; i++)
        {
            _sources[i].TrySetResult(_versions[i]);
        }

        return Task.WhenAll(_awaiters);
    }

    private static async Task AwaitOne(ValueTask task) => await task;
}

/// <summary>The DotNext.Threading peer: one armed <see cref="ValueTaskCompletionSource"/> (asynchronous continuations) per pending awaiter.</summary>
internal sealed class DotNextAwaiters(int count) : PendingAwaiters
{
    private readonly ValueTaskCompletionSource[] _sources = new ValueTaskCompletionSource[count];
    private readonly Task[] _awaiters = new Task[count];

    public override void Park()
    {
        for (int i = 0; i < _sources.Length; i++)
        {
            var source = new ValueTaskCompletionSource(runContinuationsAsynchronously: true);
            _sources[i] = source;
            _awaiters[i] = AwaitOne(source.CreateTask(Timeout.InfiniteTimeSpan, CancellationToken.None));
        }
    }

    public override Task ReleaseAsync()
    {
        foreach (ValueTaskCompletionSource source in _sources)
        {
            source.TrySetResult();
        }

        return Task.WhenAll(_awaiters);
    }

    private static async Task AwaitOne(ValueTask task) => await task;
}
