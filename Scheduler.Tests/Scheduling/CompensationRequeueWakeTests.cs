using Scheduler.Native;
using Scheduler.Tests.IO;

namespace Scheduler.Tests.Scheduling;

/// <summary>
/// A compensation thread that takes an overflow batch runs its oldest item and sends the rest back to the global queue.
/// When that enqueue runs out of memory the rest go back one item at a time (<c>RequeueOneByOne</c>), and that path
/// must wake a parked worker itself: the compensation thread is about to run an item that may block, and the watchdog
/// starts another only while every worker is stalled, which a parked one is not. When the queue refuses even single
/// items, the rest of the batch runs on the compensation thread itself: accepted work is never dropped.
/// </summary>
[Collection(nameof(FaultInjectionGroup))]
public sealed class CompensationRequeueWakeTests
{
    private const int Children = 48; // with a deque of 16, several overflow batches of 8 reach the global queue
    private static readonly TimeSpan Bound = TimeSpan.FromSeconds(30);
    private static readonly TimeSpan BlockerBound = TimeSpan.FromSeconds(8);

    /// <summary>Compensation after the default delay, and a deque of 16: overflow batches reach the global queue early.</summary>
    private static WorkStealingTaskScheduler Create(int workers, string threadNamePrefix) =>
        new(new WorkStealingTaskSchedulerOptions
        {
            WorkerCount = workers,
            ThreadNamePrefix = threadNamePrefix,
            BlockingCompensationDelay = TimeSpan.FromMilliseconds(100),
            LocalQueueCapacity = 16,
        });

    // Mutant (session 32's M24): RequeueOneByOne without its OnGlobalEnqueued() after the items moved. Then the batch's
    // rest sat in the global queue with one worker parked, the other blocked, and the compensation thread blocked in the
    // batch's first item: nobody ran it until that item gave up.
    [Fact]
    public async Task Items_a_compensation_thread_requeues_one_by_one_after_out_of_memory_wake_a_parked_worker()
    {
        var scheduler = Create(workers: 2, "RequeueWake");
        using var disposeScheduler = SchedulerTestHelpers.DisposeBoundedOnExit(scheduler);
        using var secondWorkerStarted = new ManualResetEventSlim();
        using var releaseSecondWorker = new ManualResetEventSlim();
        using var allChildrenRan = new CountdownEvent(Children);
        int secondWorker = -1;
        int ranElsewhere = 0;
        int blockers = 0;
        bool blockerSawSiblings = false;
        int injected = 0;
        bool secondWorkerParkedBeforeRequeue = false;

        FaultInjection.HookForTests = name =>
        {
            // Once, on the compensation thread's requeue of the batch it took: free the second worker, let it run what
            // else is queued and park, then refuse the batch, so its items go back one by one to a scheduler whose only
            // free worker is parked.
            if (name != "batch-enqueue" || !scheduler.IsCompensationThread || Interlocked.Exchange(ref injected, 1) != 0)
            {
                return 0;
            }

            releaseSecondWorker.Set();
            secondWorkerParkedBeforeRequeue = SpinWait.SpinUntil(() => scheduler.IsWorkerParked(Volatile.Read(ref secondWorker)), Bound);
            return 12; // ENOMEM
        };

        try
        {
            Task second = scheduler.Factory.StartNew(() =>
            {
                scheduler.TryGetCurrentWorkerIndex(out int self);
                Volatile.Write(ref secondWorker, self);
                secondWorkerStarted.Set();
                releaseSecondWorker.Wait(Bound).Should().BeTrue("the injection releases this worker");
            });
            secondWorkerStarted.Wait(Bound).Should().BeTrue();

            Task first = scheduler.Factory.StartNew(() =>
            {
                for (int i = 0; i < Children; i++)
                {
                    scheduler.Factory.StartNew(() =>
                    {
                        if (scheduler.IsCompensationThread && Interlocked.Increment(ref blockers) == 1)
                        {
                            // The batch's first item, run by the compensation thread after the requeue: it waits for
                            // every sibling, so only a woken worker can run the rest of its batch.
                            blockerSawSiblings = SpinWait.SpinUntil(() => Volatile.Read(ref ranElsewhere) == Children - 1, BlockerBound);
                        }
                        else
                        {
                            Interlocked.Increment(ref ranElsewhere);
                        }

                        allChildrenRan.Signal();
                    });
                }

                // Blocks with its children queued: the watchdog moves what stays in this worker's queues to the global
                // queue, and a compensation thread starts after the delay, while the other worker still blocks too.
                allChildrenRan.Wait(Bound).Should().BeTrue("every child runs, one way or another");
            });

            await Task.WhenAll(first, second).WithTimeout("the two blocked workers' tasks", Bound);
        }
        finally
        {
            FaultInjection.HookForTests = null;
            releaseSecondWorker.Set();
        }

        injected.Should().Be(1, "a compensation thread took an overflow batch and its requeue was refused");
        secondWorkerParkedBeforeRequeue.Should().BeTrue("the freed worker ran what it found and parked");
        blockerSawSiblings.Should().BeTrue("the items requeued one by one wake the parked worker, which runs them while the compensation thread blocks");
        ranElsewhere.Should().Be(Children - 1);
    }

    // The last resort, never covered before session 47's mutation run: with the batch's requeue and every single item's
    // refused, the compensation thread runs the batch's items itself, oldest first. Mutants it kills: the first item's
    // run removed or the loop over the rest skipped (items lost: the join never completes), the loop's run removed or
    // RequeueOneByOne's `break` removed (an endless loop on the compensation thread).
    [Fact]
    public async Task A_batch_the_global_queue_refuses_item_by_item_runs_on_the_compensation_thread_and_nothing_is_lost()
    {
        var scheduler = Create(workers: 1, "RequeueRefused");
        using var disposeScheduler = SchedulerTestHelpers.DisposeBoundedOnExit(scheduler);
        var runs = new int[Children];
        using var allChildrenRan = new CountdownEvent(Children);
        int refusedBatches = 0;
        int refusedItems = 0;
        int ranByCompensation = 0;

        FaultInjection.HookForTests = name =>
        {
            if (!scheduler.IsCompensationThread)
            {
                return 0;
            }

            if (name == "batch-enqueue")
            {
                Interlocked.Increment(ref refusedBatches);
                return 12; // ENOMEM
            }

            if (name == "global-enqueue")
            {
                Interlocked.Increment(ref refusedItems);
                return 12;
            }

            return 0;
        };

        try
        {
            // The only worker spawns more than its deque holds (the oldest go to the global queue as overflow batches),
            // then blocks on them all: only a compensation thread can run them, and every requeue it tries is refused.
            Task parent = scheduler.Factory.StartNew(() =>
            {
                for (int i = 0; i < Children; i++)
                {
                    int index = i;
                    scheduler.Factory.StartNew(() =>
                    {
                        if (scheduler.IsCompensationThread)
                        {
                            Interlocked.Increment(ref ranByCompensation);
                        }

                        Interlocked.Increment(ref runs[index]);
                        allChildrenRan.Signal();
                    });
                }

                allChildrenRan.Wait(Bound).Should().BeTrue("every child runs, one way or another");
            });

            await parent.WithTimeout("the blocked parent", Bound);
        }
        finally
        {
            FaultInjection.HookForTests = null;
        }

        runs.Should().OnlyContain(count => count == 1, "each child runs exactly once: none lost, none run twice");
        refusedBatches.Should().BePositive("a compensation thread took an overflow batch and its requeue was refused");
        refusedItems.Should().BePositive("the batch's items were refused one by one too");
        ranByCompensation.Should().BeGreaterThanOrEqualTo(8, "the refused batch's items ran on the compensation thread");
    }
}
