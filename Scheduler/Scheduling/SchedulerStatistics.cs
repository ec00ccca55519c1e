namespace Scheduler;

/// <summary>A snapshot of a <see cref="WorkStealingTaskScheduler"/>'s counters since it was created.</summary>
/// <remarks>Counters are kept per worker and summed on read, so a snapshot taken under load is approximate.</remarks>
public readonly record struct SchedulerStatistics
{
    /// <summary>Work items run by workers and compensation threads (tasks, continuations, pipe callbacks, wakers), inlined ones excluded.</summary>
    public long TasksExecuted { get; init; }

    /// <summary>Work items a worker took from another worker's deque or inbox.</summary>
    public long TasksStolen { get; init; }

    /// <summary>Tasks run inline on a worker (for example by <see cref="Task.Wait()"/> on a queued task).</summary>
    public long TasksInlined { get; init; }

    /// <summary>Times a worker blocked on its event because no work was found.</summary>
    public long WorkerParks { get; init; }

    /// <summary>Times a parked worker was woken.</summary>
    public long WorkerWakeups { get; init; }

    /// <summary>Approximate number of work items waiting in all queues.</summary>
    public int QueuedTasks { get; init; }
}
