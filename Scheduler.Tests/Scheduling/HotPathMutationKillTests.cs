using System.Collections.Concurrent;
using System.Diagnostics;

namespace Scheduler.Tests.Scheduling;

/// <summary>
/// Tests written in a mutation round against the scheduler's hot paths (the deque, the LIFO slot and its cap, the
/// fairness turns, the stalled-peer rescue, the search and park protocol): each pins a behaviour of docs/scheduling.md that
/// a mutant of the library changed without any other test noticing. The comment on each test names its mutant.
/// </summary>
[Collection(SerialResourceGroup.Name)]
public sealed class HotPathMutationKillTests
{
    // Generous: each bounded step takes milliseconds, but a thread held off its core on a loaded machine can come
    // seconds late; a bound cut short fails the test.
    private static readonly TimeSpan Bound = TimeSpan.FromSeconds(10);

    /// <summary>Two workers that neither spin nor get rescued (no watchdog, no compensation): only the wake-ups under test move work.</summary>
    private static WorkStealingTaskScheduler CreatePairWithoutRescues()
    {
        var scheduler = new WorkStealingTaskScheduler(new WorkStealingTaskSchedulerOptions
        {
            WorkerCount = 2,
            SpinIterations = 0,
            BlockingCompensationDelay = Timeout.InfiniteTimeSpan,
            ThreadNamePrefix = "HotPath",
        });
        scheduler.SuppressWatchdogForTests = true;
        return scheduler;
    }

    private static async Task BothParkedAsync(WorkStealingTaskScheduler scheduler)
    {
        await SchedulerTestHelpers.WaitUntilAsync(() => scheduler.IsWorkerParked(0) && scheduler.IsWorkerParked(1));
        scheduler.IsWorkerParked(0).Should().BeTrue();
        scheduler.IsWorkerParked(1).Should().BeTrue();
    }

    private static void Compute(TimeSpan duration)
    {
        var clock = Stopwatch.StartNew();
        while (clock.Elapsed < duration)
        {
            Thread.SpinWait(50);
        }
    }

    // Mutant: Worker.Loop.cs TryGetWork no longer reset _lifoRunsInARow when the LIFO cap demoted the slot's task
    // (`_lifoRunsInARow = 0;` at the cap dropped). The counter then stayed at the cap for as long as the slot was refilled,
    // so after the first demotion every slot task was demoted again at once: two ping-pong chains on one worker
    // alternated item by item, and the slot (cache-hot, depth-first) was in effect disabled. docs: "At most
    // LifoSlotLimit (3) runs in a row: then the worker gives one turn to [...] the next-newest deque item and demotes the
    // slot's task to the deque" — the turn is one item, after which the slot runs again up to the cap.
    [Fact]
    public async Task After_a_LIFO_cap_turn_the_newly_spawned_slot_task_again_gets_LifoSlotLimit_runs_in_a_row()
    {
        const int Limit = 3;
        var scheduler = new WorkStealingTaskScheduler(new WorkStealingTaskSchedulerOptions
        {
            WorkerCount = 1,
            LifoSlotLimit = Limit,
            FairnessInterval = int.MaxValue, // no fairness turn after the first: every choice below is the cap's
            ThreadNamePrefix = "HotPath",
        });
        scheduler.SuppressWatchdogForTests = true; // a rescue of a slot task (the worker preempted) would reorder the run
        await using var disposeScheduler = SchedulerTestHelpers.DisposeWithin(scheduler);
        const int Runs = 40;
        var order = new ConcurrentQueue<char>();
        var done = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);

        void Link(char chain)
        {
            order.Enqueue(chain);
            if (order.Count >= Runs)
            {
                done.TrySetResult();
                return;
            }

            Task.Factory.StartNew(() => Link(chain), CancellationToken.None, TaskCreationOptions.None, scheduler);
        }

        await scheduler.Factory.StartNew(() =>
        {
            // A goes to the slot, then to the deque when B displaces it; B's chain then refills the slot.
            Task.Factory.StartNew(() => Link('A'), CancellationToken.None, TaskCreationOptions.None, scheduler);
            Task.Factory.StartNew(() => Link('B'), CancellationToken.None, TaskCreationOptions.None, scheduler);
        }).WithTimeout("the spawning task");
        await done.Task.WithTimeout("the two chains");

        string sequence = new([.. order.Take(Runs)]);
        // B runs Limit times from the slot; the cap gives A (the deque's newest) one turn and demotes B's link; A's next
        // link fills the slot and runs Limit times more: every later stretch is 1 + Limit long.
        sequence.Should().StartWith("BBBAAAABBBBAAAABBBBAAAA", "each chain gets its turn and then LifoSlotLimit slot runs in a row (got {0})", sequence);
    }

    // Mutant: Worker.Loop.cs TryRescueStalledPeer also took the inbox of an idle peer (`peer._isIdle` dropped from its
    // conditions), so a busy worker's fairness turn took work targeted at a peer that was idle but awake (spinning, or on
    // its way to park), which takes it itself. docs: "Idle peers take from an inbox only while its owner is busy; an idle
    // owner gets its own continuations back"; the rescue is for a worker "while not idle or parked".
    [Fact]
    public async Task A_busy_peers_fairness_turn_leaves_the_inbox_of_an_idle_but_awake_worker_to_that_worker()
    {
        var scheduler = SchedulerTestHelpers.Create(2, spin: 0);
        await using var disposeScheduler = SchedulerTestHelpers.DisposeWithin(scheduler);
        using var stop = new CancellationTokenSource();
        using var releaseHeld = new ManualResetEventSlim();
        using var held = new ManualResetEventSlim();
        int holdIndex = -1;
        int busyIndex = -1;
        int chainRuns = 0;
        var chainDone = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);

        // Holds the chosen worker on its way to park: idle (its loop found nothing) but not parked, as while it spins.
        scheduler.ParkHookForTests = () =>
        {
            if (scheduler.TryGetCurrentWorkerIndex(out int index) && index == Volatile.Read(ref holdIndex) && !releaseHeld.IsSet)
            {
                held.Set();
                releaseHeld.Wait(Bound);
            }
        };

        void Chain()
        {
            scheduler.TryGetCurrentWorkerIndex(out int index);
            Volatile.Write(ref busyIndex, index);
            Interlocked.Increment(ref chainRuns);
            if (stop.IsCancellationRequested)
            {
                chainDone.TrySetResult();
                return;
            }

            Task.Factory.StartNew(Chain, CancellationToken.None, TaskCreationOptions.None, scheduler);
        }

        try
        {
            _ = scheduler.Factory.StartNew(Chain);
            SpinWait.SpinUntil(() => Volatile.Read(ref chainRuns) > 1_000, Bound).Should().BeTrue("the chain keeps one worker busy");
            int busy = Volatile.Read(ref busyIndex);
            int idle = 1 - busy;
            Volatile.Write(ref holdIndex, idle);

            // Wake the other worker with an item of its own: when it runs out of work again, it is held before parking.
            scheduler.EnqueueToWorker(idle, new SchedulerTestHelpers.RecordingWorkItem(() => { }));
            held.Wait(Bound).Should().BeTrue("the idle worker goes to park and is held on the way");
            Volatile.Read(ref busyIndex).Should().Be(busy, "only the busy worker runs the chain while the other is held");

            int ranOn = -1;
            var target = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            scheduler.EnqueueToWorker(idle, new SchedulerTestHelpers.RecordingWorkItem(() =>
            {
                scheduler.TryGetCurrentWorkerIndex(out ranOn);
                target.TrySetResult();
            }));

            // Dozens of the busy worker's fairness turns, each looking at the idle worker, which makes no progress. Counted
            // in the chain's runs rather than waited for in time: a loaded machine may give the busy worker few of them.
            int runsBefore = Volatile.Read(ref chainRuns);
            SpinWait.SpinUntil(() => target.Task.IsCompleted || Volatile.Read(ref chainRuns) - runsBefore > 20 * 61, Bound);
            (Volatile.Read(ref chainRuns) - runsBefore).Should().BeGreaterThan(10 * 61, "the busy worker had many fairness turns meanwhile");
            releaseHeld.Set();
            await target.Task.WithTimeout("the item targeted at the idle worker");
            ranOn.Should().Be(idle, "an idle worker takes its own inbox; a busy peer's rescue is for stalled busy workers only");
        }
        finally
        {
            releaseHeld.Set();
            stop.Cancel();
        }

        await chainDone.Task.WithTimeout("the chain");
    }

    // Mutant: Worker.Loop.cs TryRescueStalledPeer counted one steal per rescue (`Counters.Stolen += 1 + moved` became
    // `+= 1`), though a rescue takes the item it runs and up to 15 more into its deque. docs, statistics: TasksStolen
    // counts every item taken from a peer (TryStealHalf's batch steals count each item moved; so does the rescue).
    [Fact]
    public async Task TasksStolen_counts_every_item_a_stalled_peer_rescue_takes_not_one_per_rescue()
    {
        var scheduler = StalledAndBusyPair.CreateScheduler(spin: 0);
        await using var disposeScheduler = SchedulerTestHelpers.DisposeWithin(scheduler);
        await using var pair = StalledAndBusyPair.Start(scheduler);
        const int Batch = 16; // one rescue's worth: the item it runs plus the 15 it moves to its deque
        int ran = 0;
        var allRan = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        long stolenBefore = scheduler.GetStatistics().TasksStolen;

        pair.QueueToStalledFromBusy(Batch, _ =>
        {
            if (Interlocked.Increment(ref ran) == Batch)
            {
                allRan.TrySetResult();
            }
        });

        await allRan.Task.WithTimeout("the stalled worker's inbox, run by its busy peer", Bound / 2);
        long stolen = scheduler.GetStatistics().TasksStolen - stolenBefore;
        stolen.Should().BeGreaterThanOrEqualTo(Batch, "every item the busy peer took from the stalled worker's inbox counts as stolen");
    }

    // Mutant: Worker.Search.cs EndSearching no longer woke a parked peer when the last searcher found work while more was
    // still queued (its NotifyParked dropped). A producer that saw the searcher woke nobody, counting on it. Here an
    // overflow batch of two items reaches the global queue with both workers parked: its enqueue wakes one worker, as a
    // searcher, which runs the first item and moves the second into its deque (its own wake-up there sees itself
    // searching and wakes nobody). The first blocks until the second has run, so only the searcher's wake-up as it ends
    // its search brings the parked peer that steals the second (the watchdog, which would back this up within a period
    // or two, is kept out). docs, the park/wake protocol: "stop searching [...] if it was the last searcher and any
    // queue still visibly holds work, NotifyParked()".
    [Fact]
    public async Task The_last_searcher_that_finds_work_with_more_left_queued_wakes_a_parked_peer_for_it()
    {
        WorkStealingTaskScheduler scheduler = CreatePairWithoutRescues();
        await using var disposeScheduler = SchedulerTestHelpers.DisposeWithin(scheduler);
        await BothParkedAsync(scheduler);

        using var secondRan = new ManualResetEventSlim();
        var firstDone = new TaskCompletionSource<bool>(TaskCreationOptions.RunContinuationsAsynchronously);
        WorkItemBatch batch = scheduler.RentBatch(); // the shape a deque overflow puts in the global queue: one entry, several items
        batch.Items[0] = WorkItem.ForThreadPoolWorkItem(new SchedulerTestHelpers.RecordingWorkItem(() => firstDone.TrySetResult(secondRan.Wait(Bound))));
        batch.Items[1] = WorkItem.ForThreadPoolWorkItem(new SchedulerTestHelpers.RecordingWorkItem(secondRan.Set));
        batch.End = 2;
        scheduler.EnqueueBatch(batch);

        (await firstDone.Task.WithTimeout("the first item")).Should().BeTrue("a peer woken for the second item runs it while the first waits");
    }

    // Mutant: Worker.Loop.cs BecomeBusy no longer looked at its inbox after clearing its idle flag (its NotifyParked
    // dropped). A producer that posts to an idle, awake owner wakes nobody, counting on the owner to take the item; an
    // owner that turns busy with other work at that moment must wake a peer for it itself. The turn-busy seam places the
    // post exactly there (InboxWakeTests' back-to-back posts reach that window only when the owner wakes between them,
    // and pass under this mutant otherwise). docs, the park/wake protocol: "turn busy | idle worker about to run an item |
    // isIdle = false, full fence, and if its inbox is not empty, NotifyParked()".
    [Fact]
    public async Task An_item_posted_to_an_idle_owner_just_as_it_turns_busy_is_run_by_a_peer_the_owner_wakes()
    {
        WorkStealingTaskScheduler scheduler = CreatePairWithoutRescues();
        await using var disposeScheduler = SchedulerTestHelpers.DisposeWithin(scheduler);
        await BothParkedAsync(scheduler);

        using var secondRan = new ManualResetEventSlim();
        var firstDone = new TaskCompletionSource<bool>(TaskCreationOptions.RunContinuationsAsynchronously);
        int secondRanOn = -1;
        var second = new SchedulerTestHelpers.RecordingWorkItem(() =>
        {
            scheduler.TryGetCurrentWorkerIndex(out secondRanOn);
            secondRan.Set();
        });
        int armed = 1;
        bool postedWhileIdle = false;
        scheduler.TurnBusyHookForTests = () =>
        {
            if (scheduler.TryGetCurrentWorkerIndex(out int index) && index == 0 && Interlocked.Exchange(ref armed, 0) == 1)
            {
                // From a thread outside the scheduler, while worker 0 is still idle and awake: the post wakes nobody.
                postedWhileIdle = scheduler.IsWorkerIdle(0) && !scheduler.IsWorkerParked(0);
                var poster = new Thread(() => scheduler.EnqueueToWorker(0, second));
                poster.Start();
                poster.Join();
            }
        };

        scheduler.EnqueueToWorker(0, new SchedulerTestHelpers.RecordingWorkItem(() => firstDone.TrySetResult(secondRan.Wait(Bound))));

        (await firstDone.Task.WithTimeout("the first item")).Should().BeTrue("the second item must run on a peer while the first blocks its owner");
        postedWhileIdle.Should().BeTrue("the seam posted while the owner was idle and awake");
        secondRanOn.Should().Be(1);
    }

    // Mutant: Worker.Search.cs TryTakeGlobal no longer moved a batch of the global queue into an empty deque (its
    // `_deque.IsEmpty` branch never taken): every item cost its own trip to the shared queue, and none of it was where an
    // idle peer steals half at once. docs, the queues: "A worker that finds its deque empty takes one item to run and up
    // to 15 more into its deque, pushed newest first so that its LIFO pops keep the queue's FIFO order".
    [Fact]
    public async Task A_worker_with_an_empty_deque_takes_one_global_item_to_run_and_the_next_fifteen_into_its_deque_in_order()
    {
        // No compensation: a test thread preempted for 100 ms between the gate's start and its release would otherwise let
        // a compensation thread take the queued items. No fairness turn within the test either: an idle worker's polls count
        // down to its turns too, so with the default 61 the countdown's phase when the batch is taken depends on how long
        // it spun before the gate came, and a turn falling among the 15 moved items takes the global queue's head ahead
        // of them (a CI run read 0..6, 16, 7..15: the only failure in many runs, under the suite's load).
        var scheduler = new WorkStealingTaskScheduler(new WorkStealingTaskSchedulerOptions
        {
            WorkerCount = 1,
            BlockingCompensationDelay = Timeout.InfiniteTimeSpan,
            FairnessInterval = int.MaxValue,
            ThreadNamePrefix = "HotPath",
        });
        await using var disposeScheduler = SchedulerTestHelpers.DisposeWithin(scheduler);
        using var gate = new ManualResetEventSlim();
        using var gated = new ManualResetEventSlim();
        Task gateTask = scheduler.Factory.StartNew(() =>
        {
            gated.Set();
            gate.Wait(Bound).Should().BeTrue();
        });
        gated.Wait(Bound).Should().BeTrue("the only worker runs the gate");

        const int Items = 20;
        int dequeCountAtFirst = -1;
        var order = new ConcurrentQueue<int>();
        Task[] items = [.. Enumerable.Range(0, Items).Select(i => scheduler.Factory.StartNew(() =>
        {
            if (i == 0)
            {
                dequeCountAtFirst = scheduler.CurrentWorker!.Deque.Count;
            }

            order.Enqueue(i);
        }))];
        gate.Set();
        await Task.WhenAll([gateTask, .. items]).WithTimeout("the gate and the items");

        dequeCountAtFirst.Should().Be(15, "the visit that took item 0 from the global queue moved the next 15 into the empty deque");
        order.Should().Equal(Enumerable.Range(0, Items), "the batch keeps the global queue's FIFO order on one worker");
    }

    // Mutant: Spinning.cs OnPreemptedWhileSpinning no longer reset the spin time counted since the previous cut
    // (`_spinSinceCut = 0;` dropped). That count starts huge, so every cut then looked isolated and paused nothing: under
    // steady CPU contention the worker went on spinning, and being cut, at every idle spell. Spinning.cs and docs ("Spinning
    // under CPU contention"): a spell cut short again before the worker has spun 20 ms in all since the previous cut makes
    // it skip spinning for 10 ms, doubling up to a second, so close cuts come ever more rarely.
    [Fact]
    public async Task Under_steady_cpu_contention_close_spin_cuts_pause_spinning_so_cuts_stay_few()
    {
        var scheduler = new WorkStealingTaskScheduler(new WorkStealingTaskSchedulerOptions { WorkerCount = 1, SpinIterations = 512, ThreadNamePrefix = "HotPath" });
        await using var disposeScheduler = SchedulerTestHelpers.DisposeWithin(scheduler);
        int items = 0;
        using (new CpuHogs())
        {
            // Each item leaves the worker idle for a couple of milliseconds: a whole spell with nothing to find, which the
            // hogs cut short (its yields hand them the CPU for a time slice).
            // A second, and at least 20 items (so that a spell cut at every item would show), up to 1.5 s on a slow machine.
            var clock = Stopwatch.StartNew();
            while ((clock.Elapsed < TimeSpan.FromSeconds(1) || items < 20) && clock.Elapsed < TimeSpan.FromSeconds(1.5))
            {
                await Task.Factory.StartNew(static () => { }, CancellationToken.None, TaskCreationOptions.None, scheduler).WithTimeout("an item");
                items++;
                Thread.Sleep(2);
            }
        }

        // An isolated first cut, then pauses of 10, 20, 40, ... ms between close cuts: at most nine cuts fit in 1.5 s (5-6
        // measured here; a spell cut at every item, as under the mutant, made one cut per item or nearly: 28-51).
        long cuts = scheduler.SpinsCutShortPerWorker[0];
        cuts.Should().BeLessThanOrEqualTo(10, "close cuts pause spinning for ever longer ({0} items)", items);
    }
}
