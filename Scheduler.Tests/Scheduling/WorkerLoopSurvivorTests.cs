namespace Scheduler.Tests.Scheduling;

/// <summary>
/// Survivors of session 45's mutation run over the worker's loop (<c>WorkStealingTaskScheduler.Worker.Loop.cs</c>), in its
/// fairness turn and its rescue of a stalled peer's inbox. Each test fails under the mutant named in its comment.
/// </summary>
public sealed class WorkerLoopSurvivorTests
{
    // Fairness with a peer: ExecutionTests' starvation test has one worker, which skips the look at a stalled peer that
    // opens every busy worker's fairness turn here; behind it the turn must still reach the global queue. Only while
    // both workers are busy: an idle peer would take outside work itself. The LIFO cap also looks at the global queue,
    // so it is lifted: the fairness turn is the only way in. (The mutant that made the peer look answer "found work"
    // with nothing in hand survives this test: a peer preempted between two turns looks stalled and lets the turn go
    // on. The next test kills it: with a turn at every item, its worker never idles and shutdown hangs.)
    [Fact]
    public async Task Two_workers_each_busy_with_a_local_chain_still_run_outside_work()
    {
        var scheduler = new WorkStealingTaskScheduler(new WorkStealingTaskSchedulerOptions
        {
            WorkerCount = 2,
            LifoSlotLimit = int.MaxValue,
            BlockingCompensationDelay = Timeout.InfiniteTimeSpan,
            ThreadNamePrefix = "Test",
        });
        await using var disposeScheduler = SchedulerTestHelpers.DisposeWithin(scheduler);
        int stop = 0;
        var chainOn = new int[2];

        void Chain()
        {
            if (scheduler.TryGetCurrentWorkerIndex(out int index))
            {
                Volatile.Write(ref chainOn[index], 1);
            }

            if (Volatile.Read(ref stop) == 0)
            {
                Task.Factory.StartNew(Chain, CancellationToken.None, TaskCreationOptions.None, scheduler); // its LIFO slot
            }
        }

        try
        {
            for (int worker = 0; worker < 2; worker++)
            {
                scheduler.EnqueueToWorker(worker, new SchedulerTestHelpers.RecordingWorkItem(Chain));
            }

            await SchedulerTestHelpers.WaitUntilAsync(() => Volatile.Read(ref chainOn[0]) == 1 && Volatile.Read(ref chainOn[1]) == 1);
            chainOn.Should().Equal([1, 1], "each worker runs a chain");

            await scheduler.Factory.StartNew(() => Volatile.Write(ref stop, 1)).WaitAsync(SchedulerTestHelpers.Timeout);
        }
        finally
        {
            Volatile.Write(ref stop, 1);
        }
    }

    // Mutant: the loop went on to park after running an item its spin found, instead of looking for more work first.
    // What that item spawned waits in the LIFO slot, which a parking worker does not count as queued work: the worker
    // slept, and the child ran only once the watchdog rescued it from the slot. The worker spins for as long as it is
    // idle here (a spell of int.MaxValue polls), so the parent is found by the spin; the child must run before the worker
    // parks again. (Should the machine preempt the spin, the back-off parks the worker and the parent arrives by a
    // wake-up instead: the test then passes without exercising the path.)
    [Fact]
    public async Task A_child_of_an_item_found_while_spinning_runs_before_the_worker_parks()
    {
        var scheduler = new WorkStealingTaskScheduler(new WorkStealingTaskSchedulerOptions
        {
            WorkerCount = 1,
            SpinIterations = int.MaxValue,
            ThreadNamePrefix = "Test",
        });
        await using var disposeScheduler = SchedulerTestHelpers.DisposeWithin(scheduler);
        await scheduler.Factory.StartNew(() => { }).WithTimeout(); // the worker is idle, spinning, from here on

        for (int round = 0; round < 20; round++)
        {
            long parksAtParent = -1;
            Task<long> child = await scheduler.Factory.StartNew(() =>
            {
                parksAtParent = scheduler.GetStatistics().WorkerParks;
                return Task.Factory.StartNew(() => scheduler.GetStatistics().WorkerParks, CancellationToken.None, TaskCreationOptions.None, scheduler);
            }).WithTimeout();

            long parksAtChild = await child.WithTimeout();
            parksAtChild.Should().Be(parksAtParent, "the worker runs what its item spawned before it parks (round {0})", round);
        }
    }

    // Mutants: the rescue's batch limit ignored how full the rescuer's deque was (capacity + count instead of
    // capacity − count), and the pushes that did not fit dropped their items. Worker 1 is stalled in a long item with 20
    // items in its inbox; worker 0 runs out a task that left 7 of its 8 children in its 16-slot deque, with a fairness
    // turn at every item: its second turn rescues 1 item and moves what fits (9 of the rest) into its deque. Also the
    // peer look answering "found work" with nothing in hand when the peer was not stalled: with a turn at every item,
    // worker 0 then never idled once worker 1 did, and the scheduler's disposal timed out.
    [Fact]
    public async Task A_rescue_into_a_nearly_full_deque_moves_only_what_fits_and_loses_nothing()
    {
        const int Inbox = 20;
        var scheduler = new WorkStealingTaskScheduler(new WorkStealingTaskSchedulerOptions
        {
            WorkerCount = 2,
            LocalQueueCapacity = 16,
            FairnessInterval = 1,
            BlockingCompensationDelay = Timeout.InfiniteTimeSpan,
            ThreadNamePrefix = "Test",
        });
        await using var disposeScheduler = SchedulerTestHelpers.DisposeWithin(scheduler);
        int release = 0;
        int stalling = 0;
        int spawnerRunning = 0;
        int posted = 0;
        int ran = 0;
        int children = 0;
        try
        {
            scheduler.EnqueueToWorker(1, new SchedulerTestHelpers.RecordingWorkItem(() =>
            {
                Volatile.Write(ref stalling, 1);
                SpinWait.SpinUntil(() => Volatile.Read(ref release) == 1);
            }));
            await SchedulerTestHelpers.WaitUntilAsync(() => Volatile.Read(ref stalling) == 1);

            scheduler.EnqueueToWorker(0, new SchedulerTestHelpers.RecordingWorkItem(() =>
            {
                Volatile.Write(ref spawnerRunning, 1);
                SpinWait.SpinUntil(() => Volatile.Read(ref posted) == 1);
                for (int i = 0; i < 8; i++)
                {
                    Task.Factory.StartNew(() => Interlocked.Increment(ref children), CancellationToken.None, TaskCreationOptions.None, scheduler);
                }
            }));
            await SchedulerTestHelpers.WaitUntilAsync(() => Volatile.Read(ref spawnerRunning) == 1);

            // Both workers busy: nobody takes these before worker 0's fairness turns.
            for (int i = 0; i < Inbox; i++)
            {
                scheduler.EnqueueToWorker(1, new SchedulerTestHelpers.RecordingWorkItem(() => Interlocked.Increment(ref ran)));
            }

            Volatile.Write(ref posted, 1);
            await SchedulerTestHelpers.WaitUntilAsync(() => Volatile.Read(ref ran) == Inbox && Volatile.Read(ref children) == 8);
            Volatile.Read(ref ran).Should().Be(Inbox, "every item queued to the stalled worker runs, on its peer");
            Volatile.Read(ref children).Should().Be(8);
            Volatile.Read(ref release).Should().Be(0, "all of it ran while worker 1 was still stalled");
        }
        finally
        {
            Volatile.Write(ref release, 1);
        }
    }
}
