namespace Scheduler.Benchmarks.Compare;

/// <summary>
/// A one-shot signal that a task on the scheduler under test awaits and a foreign thread fires, re-armed for every
/// sample of <see cref="WakeLatencyProbe"/>. Subclass it to measure another awaitable (e.g. a pooled waker).
/// </summary>
internal abstract class WakeSignal
{
    /// <summary>Awaiter side (on the scheduler under test): prepares and returns the awaitable for the next <see cref="Fire"/>.</summary>
    public abstract ValueTask<long> Arm();

    /// <summary>Foreign-thread side: completes the armed awaitable with <paramref name="timestamp"/> (a <see cref="System.Diagnostics.Stopwatch"/> timestamp).</summary>
    public abstract void Fire(long timestamp);
}

/// <summary>A fresh <see cref="TaskCompletionSource{TResult}"/> per sample, with continuations forced asynchronous so the
/// foreign thread never runs the awaiter inline: what a Task-based I/O completion does.</summary>
internal sealed class TaskCompletionSourceWakeSignal : WakeSignal
{
    private TaskCompletionSource<long>? _source;

    public override ValueTask<long> Arm()
    {
        var source = new TaskCompletionSource<long>(TaskCreationOptions.RunContinuationsAsynchronously);
        _source = source;
        return new ValueTask<long>(source.Task);
    }

    public override void Fire(long timestamp) =>
        (_source ?? throw new InvalidOperationException("Fire before Arm.")).TrySetResult(timestamp);
}
