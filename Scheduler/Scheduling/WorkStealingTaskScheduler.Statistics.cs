namespace Scheduler;

public sealed partial class WorkStealingTaskScheduler
{
    /// <summary>Sums the per-worker counters into a snapshot (approximate while workers run).</summary>
    public SchedulerStatistics GetStatistics()
    {
        long executed = Volatile.Read(ref _compensationExecuted), stolen = 0, inlined = 0, parks = 0, wakeups = 0;
        int queued = GlobalQueuedCount;
        foreach (Worker worker in _workers)
        {
            executed += Volatile.Read(ref worker.Counters.Executed);
            stolen += Volatile.Read(ref worker.Counters.Stolen);
            inlined += Volatile.Read(ref worker.Counters.Inlined);
            parks += Volatile.Read(ref worker.Counters.Parks);
            wakeups += Volatile.Read(ref worker.Counters.Wakeups);
            queued += worker.ApproximateQueuedCount;
        }

        return new SchedulerStatistics
        {
            TasksExecuted = executed,
            TasksStolen = stolen,
            TasksInlined = inlined,
            WorkerParks = parks,
            WorkerWakeups = wakeups,
            QueuedTasks = queued,
        };
    }
}
