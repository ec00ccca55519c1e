using System.Diagnostics;

namespace Scheduler.Tests.Scheduling;

/// <summary>
/// Tests written in a mutation round against the scheduler's newer internals (compensation threads, the blocked-worker
/// rescue, held overflow batches, the watchdog, option validation): each pins a behaviour of docs/scheduling.md that a
/// mutant of the library changed without any other test noticing. The comment on each test names its mutant.
/// </summary>
[Collection(SerialResourceGroup.Name)]
public sealed class SchedulingMutationKillTests
{
    private static readonly TimeSpan Bound = TimeSpan.FromSeconds(30);

    private static WorkStealingTaskScheduler Create(int workers, TimeSpan delay, string prefix = "MutationKill", int capacity = 256) =>
        new(new WorkStealingTaskSchedulerOptions
        {
            WorkerCount = workers,
            ThreadNamePrefix = prefix,
            BlockingCompensationDelay = delay,
            LocalQueueCapacity = capacity,
        });

    private static void Compute(TimeSpan duration)
    {
        var clock = Stopwatch.StartNew();
        while (clock.Elapsed < duration)
        {
            Thread.SpinWait(50);
        }
    }

    // Mutant: WorkStealingTaskSchedulerOptions.Validate refused WorkerCount == MaxWorkerCount (`>` became `>=`). The
    // documented range is 1 to MaxWorkerCount inclusive; checked on Validate itself (4096 threads are too many to start here).
    [Fact]
    public void The_largest_documented_worker_count_passes_validation()
    {
        new WorkStealingTaskSchedulerOptions { WorkerCount = WorkStealingTaskSchedulerOptions.MaxWorkerCount }
            .Invoking(o => o.Validate()).Should().NotThrow();
        new WorkStealingTaskSchedulerOptions { WorkerCount = WorkStealingTaskSchedulerOptions.MaxWorkerCount + 1 }
            .Invoking(o => o.Validate()).Should().Throw<ArgumentOutOfRangeException>().WithParameterName("WorkerCount");
    }

    // Mutant: CheckStarvation dropped its `!HasAnyQueuedWork()` condition, so every worker computing with nothing queued
    // started compensation threads (each found nothing and left). docs: a compensation thread starts only "while work is
    // queued".
    [Fact]
    public async Task Every_worker_computing_with_nothing_queued_starts_no_compensation_thread()
    {
        WorkStealingTaskScheduler scheduler = Create(2, TimeSpan.FromMilliseconds(10));
        using var disposeScheduler = SchedulerTestHelpers.DisposeBoundedOnExit(scheduler);
        using var rendezvous = new Barrier(2);
        Task[] computers = [.. Enumerable.Range(0, 2).Select(_ => scheduler.Factory.StartNew(() =>
        {
            rendezvous.SignalAndWait(Bound).Should().BeTrue("each worker takes one computation");
            Compute(TimeSpan.FromMilliseconds(800)); // 80 watchdog periods of standstill, nothing queued
        }))];

        await Task.WhenAll(computers).WithTimeout("the computations", Bound);
        scheduler.CompensationThreadsStarted.Should().Be(0, "nothing was queued for a compensation thread to run");
    }

    // Mutant: CheckStarvation ignored the compensation threads' progress (compensationStalled = true), so a compensation
    // thread steadily running a long queue of short items got company at every ramp step. docs: the next thread starts
    // only when "any compensation thread already running made none [no progress] either".
    [Fact]
    public async Task A_compensation_thread_that_keeps_making_progress_gets_no_second_one()
    {
        WorkStealingTaskScheduler scheduler = Create(1, TimeSpan.FromMilliseconds(200));
        using var disposeScheduler = SchedulerTestHelpers.DisposeBoundedOnExit(scheduler);
        using var release = new ManualResetEventSlim();
        using var blocking = new ManualResetEventSlim();
        Task blocker = scheduler.Factory.StartNew(() =>
        {
            blocking.Set();
            release.Wait(Bound).Should().BeTrue(); // the only worker blocks: only compensation can run the queue
        });
        blocking.Wait(Bound).Should().BeTrue();

        const int Items = 2000;
        int ran = 0;
        Task[] items = [.. Enumerable.Range(0, Items).Select(_ => scheduler.Factory.StartNew(() =>
        {
            Compute(TimeSpan.FromMilliseconds(1)); // about 2 s in all: a compensation thread progresses at every tick
            Interlocked.Increment(ref ran);
        }))];

        try
        {
            await Task.WhenAll(items).WithTimeout("the queue run by compensation", Bound);
        }
        finally
        {
            release.Set();
        }

        await blocker.WithTimeout("the blocked worker", Bound);
        ran.Should().Be(Items);
        scheduler.CompensationThreadsStarted.Should().Be(1, "the first compensation thread never stood still, so no other was needed");
    }

    // Mutant (session 32's M33): the watchdog's tick no longer woke a parked peer for a stalled worker that holds
    // stealable work (LifoRescue.cs, OnWatchdogTick's NotifyParked). LifoRescueTests covers an owner that *blocks*, which
    // the blocked-worker rescue also saves; an owner that *computes* is saved only by that wake-up. The LIFO cap's
    // demotion queues its task waking nobody, so without the wake-up the task waits the whole computation out.
    [Fact]
    public async Task Work_demoted_to_the_deque_of_a_computing_worker_reaches_a_parked_peer_before_the_computation_ends()
    {
        WorkStealingTaskScheduler scheduler = Create(2, TimeSpan.FromSeconds(30)); // no compensation thread within the test
        using var disposeScheduler = SchedulerTestHelpers.DisposeBoundedOnExit(scheduler);
        using var ran = new ManualResetEventSlim();
        int ranOn = -1;
        TimeSpan computeLimit = TimeSpan.FromSeconds(10);

        (bool Parked, bool RanMeanwhile, TimeSpan Waited, int Worker) outcome = await scheduler.Factory.StartNew(() =>
        {
            scheduler.TryGetCurrentWorkerIndex(out int self);
            bool parked = SpinWait.SpinUntil(() => scheduler.IsWorkerParked(1 - self), Bound);

            Action<object?> demoted = _ =>
            {
                scheduler.TryGetCurrentWorkerIndex(out ranOn);
                ran.Set();
            };
            scheduler.CurrentWorker!.DemoteToDeque(WorkItem.ForCallback(demoted, null));

            // Computes, never blocks: no wait handle, no sleep, no yield, so the worker counts as running, not blocked.
            var clock = Stopwatch.StartNew();
            while (!ran.IsSet && clock.Elapsed < computeLimit)
            {
                Thread.SpinWait(50);
            }

            return (parked, ran.IsSet, clock.Elapsed, self); // read here: once this returns, the owner runs it itself
        }).WithTimeout("the computing task", Bound);

        outcome.Parked.Should().BeTrue("the peer had nothing to do");
        outcome.RanMeanwhile.Should().BeTrue("a stalled worker's stealable work gets a parked peer woken, even when the worker computes");
        ranOn.Should().Be(1 - outcome.Worker, "the peer stole it; the owner was still computing");
        outcome.Waited.Should().BeLessThan(computeLimit / 2, "the watchdog looks every {0} ms", WorkStealingTaskScheduler.WatchdogPeriod.TotalMilliseconds);
    }

    // Mutant (session 48, LifoRescue.cs): the watchdog's progress count was tasks executed *minus* inlined. A worker whose
    // every task inlines one child (a spawn joined with Wait) moves both counts alike, so it looked stalled at every tick
    // while it ran a thousand tasks a second, and with work queued it got a compensation thread a delay later. docs: a
    // worker makes progress when its count of tasks "executed plus inlined" moves.
    [Fact]
    public async Task A_worker_whose_every_task_inlines_a_child_makes_progress_and_gets_no_compensation_thread()
    {
        // Twenty ticks of standstill before a thread: the original tolerates a preemption that long, the mutant's worker
        // looks stalled at nearly every tick of its second of work.
        WorkStealingTaskScheduler scheduler = Create(1, TimeSpan.FromMilliseconds(200));
        using var disposeScheduler = SchedulerTestHelpers.DisposeBoundedOnExit(scheduler);
        const int Items = 1000;
        int ranOnWorker = 0;
        Task[] items = [.. Enumerable.Range(0, Items).Select(_ => scheduler.Factory.StartNew(() =>
        {
            // Computes first: for nearly the whole item both counts stand equal, one inline ahead only at its very end.
            Compute(TimeSpan.FromMilliseconds(1));
            Task child = Task.Factory.StartNew(() => { }, CancellationToken.None, TaskCreationOptions.None, scheduler);
            child.Wait(); // a plain Wait on a worker inlines the child, which is still in this worker's LIFO slot
            if (scheduler.IsWorkerThread)
            {
                Interlocked.Increment(ref ranOnWorker);
            }
        }))];

        await Task.WhenAll(items).WithTimeout("the queue of inlining items", Bound);
        ranOnWorker.Should().Be(Items, "every item ran on the only worker, none on a compensation thread");
        scheduler.GetStatistics().TasksInlined.Should().BeGreaterThanOrEqualTo(Items);
        scheduler.CompensationThreadsStarted.Should().Be(0, "the worker moved on every tick: ten items each, a child inlined by each");
    }

    // Mutants (session 48, LifoRescue.cs): TryRescueLifoSlot reported a rescue it did not make, or denied one it made. It
    // is how the tests that race the owner tell whether a rescue moved the slot's task; the watchdog is off here, so the
    // only rescue is the test's own.
    [Fact]
    public async Task A_rescue_reports_whether_it_moved_the_task_out_of_the_slot()
    {
        WorkStealingTaskScheduler scheduler = SchedulerTestHelpers.CreateWithoutCompensation(2);
        using var disposeScheduler = SchedulerTestHelpers.DisposeBoundedOnExit(scheduler);
        scheduler.SuppressWatchdogForTests = true;
        using var spawned = new ManualResetEventSlim();
        using var childRan = new ManualResetEventSlim();
        int parentWorker = -1;
        int childWorker = -1;

        Task<bool> parent = scheduler.Factory.StartNew(() =>
        {
            scheduler.TryGetCurrentWorkerIndex(out parentWorker);
            scheduler.Factory.StartNew(() => // the only spawn: to this worker's LIFO slot
            {
                scheduler.TryGetCurrentWorkerIndex(out childWorker);
                childRan.Set();
            });
            spawned.Set();
            return childRan.Wait(Bound); // blocks the worker: only a rescue lets the child run
        });

        spawned.Wait(Bound).Should().BeTrue();
        int peer = 1 - Volatile.Read(ref parentWorker);
        try
        {
            scheduler.TryRescueLifoSlot(peer).Should().BeFalse("the peer's slot is empty");
            scheduler.LifoRescues.Should().Be(0);
            scheduler.TryRescueLifoSlot(1 - peer).Should().BeTrue("the blocked worker's slot holds the child");
            (await parent.WithTimeout("the blocked parent", Bound)).Should().BeTrue("the rescued child ran on the peer");
        }
        finally
        {
            childRan.Set(); // a failed assertion leaves the parent blocked: the disposal would wait the whole bound for it
        }

        childWorker.Should().Be(peer);
        scheduler.TryRescueLifoSlot(1 - peer).Should().BeFalse("the slot was emptied by the rescue");
        scheduler.LifoRescues.Should().Be(1);
    }
}
