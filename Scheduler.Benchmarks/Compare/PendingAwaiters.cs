namespace Scheduler.Benchmarks.Compare;

/// <summary>
/// A batch of awaiters that stay pending until released: what <c>idle_cpu</c> parks and what
/// <c>pending_task_memory</c> weighs. Subclass it to measure another awaitable (e.g. a pooled waker).
/// Storage for the batch is allocated up front, so only the awaiters themselves are weighed.
/// </summary>
internal abstract class PendingAwaiters
{
    /// <summary>Creates the pending awaiters; runs on a thread of the scheduler under test (which they capture).</summary>
    public abstract void Park();

    /// <summary>Completes every awaiter; the task finishes when all of them have resumed.</summary>
    public abstract Task ReleaseAsync();
}

/// <summary>One <see cref="TaskCompletionSource"/> per awaiter, awaited by an async method: the BCL way.</summary>
internal sealed class TaskCompletionSourceAwaiters(int count) : PendingAwaiters
{
    private readonly TaskCompletionSource[] _sources = new TaskCompletionSource[count];
    private readonly Task[] _awaiters = new Task[count];

    public override void Park()
    {
        for (int i = 0; i < _sources.Length; i++)
        {
            var source = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            _sources[i] = source;
            _awaiters[i] = AwaitOne(source);
        }
    }

    public override Task ReleaseAsync()
    {
        foreach (TaskCompletionSource source in _sources)
        {
            source.TrySetResult();
        }

        return Task.WhenAll(_awaiters);
    }

    private static async Task AwaitOne(TaskCompletionSource source) => await source.Task;
}
