namespace Scheduler.Benchmarks.Scheduling;

/// <summary>
/// Counts down finished pieces of a workload and completes <see cref="Task"/> when the last one is done,
/// or faults it on the first exception, so a broken workload fails its run instead of hanging it.
/// </summary>
/// <remarks>
/// One interlocked decrement per piece on both sides of every comparison, so it costs the same for the
/// ThreadPool and for us; <c>Task.WhenAll</c> would add an allocation-heavy join to the measured path.
/// </remarks>
internal sealed class WorkloadCompletion
{
    private readonly TaskCompletionSource _done = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private int _remaining;

    public WorkloadCompletion(int count)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(count, 1);
        _remaining = count;
    }

    /// <summary>Completes when every piece has signalled, or faults with the first failure.</summary>
    public Task Task => _done.Task;

    /// <summary>Marks one piece as done.</summary>
    public void Signal()
    {
        if (Interlocked.Decrement(ref _remaining) == 0)
        {
            _done.TrySetResult();
        }
    }

    /// <summary>Fails the whole workload (first failure wins).</summary>
    public void Fail(Exception exception) => _done.TrySetException(exception);
}
