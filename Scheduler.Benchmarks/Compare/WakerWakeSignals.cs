using DotNext.Threading.Tasks;
using Scheduler.Sources;

namespace Scheduler.Benchmarks.Compare;

/// <summary>
/// wake_latency with pooled wakers: a freshly rented <see cref="PooledValueTaskSource{T}"/> per sample, completed by the
/// foreign thread with the version-checked form (the awaiter returns the source to the pool as soon as it has read the
/// result, so a completion must never be able to reach a later rental).
/// </summary>
internal sealed class PooledWakeSignal : WakeSignal
{
    private PooledValueTaskSource<long>? _source;
    private short _version;

    public override ValueTask<long> Arm()
    {
        var source = PooledValueTaskSource<long>.Rent();
        _version = source.Version;
        _source = source;
        return source.Task;
    }

    public override void Fire(long timestamp) =>
        (_source ?? throw new InvalidOperationException("Fire before Arm.")).TrySetResult(_version, timestamp);
}

/// <summary>
/// wake_latency for the DotNext.Threading peer: one <see cref="ValueTaskCompletionSource{T}"/> (asynchronous
/// continuations) reset and re-armed per sample, which is how it is meant to be reused.
/// </summary>
internal sealed class DotNextWakeSignal : WakeSignal
{
    private readonly ValueTaskCompletionSource<long> _source = new(runContinuationsAsynchronously: true);

    public override ValueTask<long> Arm()
    {
        // The previous sample's task was awaited to completion before the probe re-arms, so a reset is allowed.
        _source.Reset();
        return _source.CreateTask(Timeout.InfiniteTimeSpan, CancellationToken.None);
    }

    public override void Fire(long timestamp) => _source.TrySetResult(timestamp);
}
