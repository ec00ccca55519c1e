namespace Scheduler.Tests.Scheduling;

/// <summary>
/// A worker whose deque ran empty takes one global item to run and moves a few more into its deque; an overflow batch
/// met on that visit goes in first. One worker, fairness turns out of the way, so every step is deterministic.
/// </summary>
public sealed class GlobalBatchTests
{
    /// <summary>
    /// The global queue holds <paramref name="plainAhead"/> outside tasks, then an overflow batch of 8 (half a ring of 16).
    /// With 4 ahead the visit meets the batch (and must count its items out of QueuedTasks); with 10 ahead it stops at
    /// its limit (half a ring) before the batch, because the batch and the moved items must both fit in the ring.
    /// </summary>
    [Theory]
    [InlineData(4)]
    [InlineData(10)]
    public async Task A_visit_to_the_global_queue_that_meets_an_overflow_batch_loses_nothing_and_counts_it_out(int plainAhead)
    {
        var scheduler = new WorkStealingTaskScheduler(new WorkStealingTaskSchedulerOptions
        {
            WorkerCount = 1,
            LocalQueueCapacity = 16,
            FairnessInterval = int.MaxValue, // no fairness turn after the first: the deque drains before the global queue
            ThreadNamePrefix = "Test",
        });
        await using var disposeScheduler = SchedulerTestHelpers.DisposeWithin(scheduler);
        const int Spawned = 18; // slot 1 + ring 16 + one more: the 18th push spills the oldest 8 as one batch
        var runs = new int[plainAhead + Spawned];
        using var running = new ManualResetEventSlim();
        using var gate = new ManualResetEventSlim();

        Task parent = scheduler.Factory.StartNew(() =>
        {
            running.Set();
            gate.Wait(SchedulerTestHelpers.Timeout); // meanwhile the outside tasks queue up ahead of the batch
            for (int i = 0; i < Spawned; i++)
            {
                int index = plainAhead + i;
                Task.Factory.StartNew(() => Interlocked.Increment(ref runs[index]), CancellationToken.None, TaskCreationOptions.None, scheduler);
            }
        });

        running.Wait(SchedulerTestHelpers.Timeout).Should().BeTrue();
        for (int i = 0; i < plainAhead; i++)
        {
            int index = i;
            _ = scheduler.Factory.StartNew(() => Interlocked.Increment(ref runs[index]));
        }

        gate.Set();
        await parent.WithTimeout();
        await SchedulerTestHelpers.WaitUntilAsync(() => runs.Sum() == runs.Length);
        runs.Should().OnlyContain(count => count == 1, "every task runs exactly once");
        await SchedulerTestHelpers.WaitUntilAsync(() => scheduler.GetStatistics().QueuedTasks == 0);
        scheduler.GetStatistics().QueuedTasks.Should().Be(0, "a batch taken from the global queue no longer counts as queued");
    }
}
