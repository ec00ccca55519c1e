using System.IO.Pipelines;

namespace Scheduler.Tests.Scheduling;

/// <summary>
/// Deque overflow: the older half of a full ring travels through the global queue as one batch entry, and whoever
/// dequeues it keeps what fits in its own deque and puts any remainder back.
/// </summary>
public sealed class OverflowBatchTests
{
    [Fact]
    public async Task Overflowed_work_is_counted_item_by_item_and_runs_exactly_once()
    {
        // The worker is blocked on purpose while the test counts what waits: a compensation thread would run it after
        // 100 ms of standstill (seen in session 29's CI on a loaded machine: 0 queued), so compensation is off.
        var scheduler = new WorkStealingTaskScheduler(new WorkStealingTaskSchedulerOptions
        {
            WorkerCount = 1,
            LocalQueueCapacity = 16,
            ThreadNamePrefix = "Test",
            BlockingCompensationDelay = Timeout.InfiniteTimeSpan,
        });
        await using var disposeScheduler = SchedulerTestHelpers.DisposeWithin(scheduler);
        const int Children = 1_000;
        var runs = new int[Children];
        using var spawned = new ManualResetEventSlim();
        using var release = new ManualResetEventSlim();
        Task parent = scheduler.Factory.StartNew(() =>
        {
            for (int i = 0; i < Children; i++)
            {
                int index = i;
                Task.Factory.StartNew(() => Interlocked.Increment(ref runs[index]), CancellationToken.None, TaskCreationOptions.None, scheduler);
            }

            spawned.Set();
            release.Wait(SchedulerTestHelpers.Timeout);
        });

        spawned.Wait(SchedulerTestHelpers.Timeout).Should().BeTrue();

        // The only worker is still inside the parent: every child waits in the LIFO slot, the deque or a batch. The
        // watchdog moves the last child from the slot of the stalled worker to the global queue within a period or two,
        // and what its deque holds once the worker has been seen blocked twice (BlockedRescue.cs); a snapshot taken during
        // either move may miss a child in transit (seen on a loaded machine: 999), so let both happen first (the deque's
        // counter grows once its move is done). After them nothing moves until the parent is released.
        await SchedulerTestHelpers.WaitUntilAsync(() => scheduler.LifoRescues >= 1 && scheduler.BlockedQueueRescues > 0);
        scheduler.LifoRescues.Should().Be(1, "the stalled worker's LIFO slot held one child");
        scheduler.GetStatistics().QueuedTasks.Should().Be(Children);
        SchedulerTestHelpers.ScheduledTasks(scheduler).Should().HaveCount(Children, "a debugger sees the tasks inside overflow batches too");
        release.Set();
        await parent.WithTimeout();
        await SchedulerTestHelpers.WaitUntilAsync(() => runs.Sum() == Children);
        runs.Should().OnlyContain(count => count == 1);
        scheduler.GetStatistics().QueuedTasks.Should().Be(0);
    }

    [Fact]
    public async Task QueuedTasks_counts_every_item_of_the_batches_left_after_one_was_taken()
    {
        // One worker with a 16-slot ring spawns 40 children: three spills of eight leave three batches in the global queue.
        // Once its deque is empty the worker takes the oldest batch, and the first of those children to run blocks it.
        // The two batches still queued must count all their items: the one taken counts out exactly its own (a batch
        // that counted out two more left QueuedTasks two short, hidden while no other batch was queued).
        var scheduler = new WorkStealingTaskScheduler(new WorkStealingTaskSchedulerOptions
        {
            WorkerCount = 1,
            LocalQueueCapacity = 16,
            FairnessInterval = int.MaxValue,
            ThreadNamePrefix = "Test",
            BlockingCompensationDelay = Timeout.InfiniteTimeSpan,
        });
        await using var disposeScheduler = SchedulerTestHelpers.DisposeWithin(scheduler);
        const int Children = 40, Spilled = 8; // the oldest eight are the first batch
        int ran = 0;
        int blocked = 0;
        using var gate = new ManualResetEventSlim();
        Task parent = scheduler.Factory.StartNew(() =>
        {
            for (int i = 0; i < Children; i++)
            {
                bool fromFirstBatch = i < Spilled;
                Task.Factory.StartNew(
                    () =>
                    {
                        if (fromFirstBatch && Interlocked.Exchange(ref blocked, 1) == 0)
                        {
                            gate.Wait(SchedulerTestHelpers.Timeout);
                        }

                        Interlocked.Increment(ref ran);
                    },
                    CancellationToken.None,
                    TaskCreationOptions.None,
                    scheduler);
            }
        });

        await parent.WithTimeout();
        await SchedulerTestHelpers.WaitUntilAsync(() => Volatile.Read(ref blocked) == 1);
        int expected = Children - Volatile.Read(ref ran) - 1; // nothing else runs while the only worker is blocked
        await SchedulerTestHelpers.WaitUntilAsync(() => scheduler.GetStatistics().QueuedTasks == expected);
        scheduler.GetStatistics().QueuedTasks.Should().Be(expected, "every child not yet run is queued somewhere");

        gate.Set();
        await SchedulerTestHelpers.WaitUntilAsync(() => Volatile.Read(ref ran) == Children);
        scheduler.GetStatistics().QueuedTasks.Should().Be(0);
    }

    [Fact]
    public void A_steady_overflow_reuses_its_batches_instead_of_allocating_new_ones()
    {
        // One worker with a 16-slot ring. Each round a callback posted from outside schedules 40 more from the worker,
        // which spills the older half of the ring to the global queue three times; the worker then takes each batch back
        // into its emptied deque and returns it to the scheduler's spare batches (four). In steady state the spills
        // rent those spares: the worker's own allocations across its Schedule calls stay at zero. Without the return,
        // every spill allocated a batch (an array of eight items: about 200 bytes).
        var scheduler = new WorkStealingTaskScheduler(new WorkStealingTaskSchedulerOptions
        {
            WorkerCount = 1,
            LocalQueueCapacity = 16,
            ThreadNamePrefix = "Test",
            BlockingCompensationDelay = Timeout.InfiniteTimeSpan,
        });
        using var disposeScheduler = SchedulerTestHelpers.DisposeBoundedOnExit(scheduler);
        PipeScheduler pipeScheduler = scheduler.PipeScheduler;
        const int PerRound = 40, WarmUpRounds = 50, Rounds = 500;
        var counters = new OverflowRoundCounters();
        Action<object?> child = static state => Interlocked.Increment(ref ((OverflowRoundCounters)state!).ChildrenRun);
        Action<object?> round = state =>
        {
            var c = (OverflowRoundCounters)state!;
            long before = GC.GetAllocatedBytesForCurrentThread();
            for (int i = 0; i < PerRound; i++)
            {
                pipeScheduler.Schedule(child, c);
            }

            c.AllocatedWhileMeasuring += c.Measuring ? GC.GetAllocatedBytesForCurrentThread() - before : 0;
        };

        for (int r = 1; r <= WarmUpRounds + Rounds; r++)
        {
            counters.Measuring = r > WarmUpRounds;
            pipeScheduler.Schedule(round, counters);
            int expected = r * PerRound;
            SpinWait.SpinUntil(() => Volatile.Read(ref counters.ChildrenRun) == expected, SchedulerTestHelpers.Timeout)
                .Should().BeTrue($"round {r} ran its {PerRound} callbacks");
        }

        scheduler.GetStatistics().QueuedTasks.Should().Be(0);
        counters.AllocatedWhileMeasuring.Should().Be(0, $"{Rounds} rounds of three spills each rent the batches the worker returned");
    }

    /// <summary>Shared by a round's callbacks; each round ends before the next starts (the test waits for it).</summary>
    private sealed class OverflowRoundCounters
    {
        public int ChildrenRun;
        public bool Measuring;
        public long AllocatedWhileMeasuring;
    }

    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(3)]
    [InlineData(4)]
    public async Task Workers_that_overflow_while_busy_take_batches_with_a_remainder_and_lose_nothing(int seed)
    {
        // Small rings and several spawning parents: workers dequeue batches while their own deque holds work
        // (fairness turns look at the global queue first), so remainders go back to the global queue.
        var scheduler = new WorkStealingTaskScheduler(new WorkStealingTaskSchedulerOptions { WorkerCount = 2, LocalQueueCapacity = 16, FairnessInterval = 3, ThreadNamePrefix = "Test" });
        await using var disposeScheduler = SchedulerTestHelpers.DisposeWithin(scheduler);
        const int Parents = 8, ChildrenPerParent = 5_000;
        var runs = new int[Parents * ChildrenPerParent];
        var random = new Random(seed);
        var parents = new Task[Parents];
        for (int p = 0; p < Parents; p++)
        {
            int parent = p;
            int pause = random.Next(0, 50);
            parents[p] = scheduler.Factory.StartNew(() =>
            {
                for (int i = 0; i < ChildrenPerParent; i++)
                {
                    int index = (parent * ChildrenPerParent) + i;
                    Task.Factory.StartNew(() => Interlocked.Increment(ref runs[index]), CancellationToken.None, TaskCreationOptions.None, scheduler);
                    if (i % 512 == 0)
                    {
                        Thread.SpinWait(pause);
                    }
                }
            });
        }

        await Task.WhenAll(parents).WithTimeout();
        await SchedulerTestHelpers.WaitUntilAsync(() => runs.Sum() == runs.Length);
        runs.Should().OnlyContain(count => count == 1);
    }
}
