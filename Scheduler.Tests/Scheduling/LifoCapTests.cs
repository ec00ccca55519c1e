namespace Scheduler.Tests.Scheduling;

/// <summary>
/// The LIFO slot's cap, on one worker with fairness turns out of the way (so every step is deterministic): at most
/// <see cref="WorkStealingTaskSchedulerOptions.LifoSlotLimit"/> runs in a row, and the task the cap demotes is never lost.
/// </summary>
public sealed class LifoCapTests
{
    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(3)]
    public async Task Older_local_work_runs_after_exactly_LifoSlotLimit_slot_runs_in_a_row(int limit)
    {
        var scheduler = CreateOneWorker(limit);
        await using var disposeScheduler = SchedulerTestHelpers.DisposeWithin(scheduler);

        // The watchdog moves a slot's task to the global queue when the worker seems stalled (its thread preempted on
        // a loaded machine), which reorders this run: only a run without a rescue says anything about the cap.
        int? linksBeforeOlder = null; // null: every attempt had a rescue
        for (int attempt = 0; attempt < 10 && linksBeforeOlder is null; attempt++)
        {
            long rescuesBefore = scheduler.LifoRescues;
            int links = await RunChainBesideOlderTask(scheduler);
            if (scheduler.LifoRescues == rescuesBefore)
            {
                linksBeforeOlder = links;
            }
        }

        linksBeforeOlder.Should().Be(limit, "the slot runs LifoSlotLimit links in a row, then the next-newest deque item gets a turn (null: the watchdog rescued a slot task in every attempt)");
    }

    [Fact]
    public async Task The_task_the_cap_demotes_into_a_full_deque_stays_in_the_slot_and_runs()
    {
        // LifoSlotLimit 1: the second slot run in a row hits the cap. The cap gives the turn to the inbox item and demotes
        // the slot's task to the deque, which is full here (16 of 16): the task must stay in the slot, not vanish.
        var scheduler = CreateOneWorker(lifoLimit: 1);
        await using var disposeScheduler = SchedulerTestHelpers.DisposeWithin(scheduler);
        const int Fillers = 16;
        int fillersRun = 0;
        var demoted = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var fromInbox = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);

        await scheduler.Factory.StartNew(() =>
        {
            for (int i = 0; i < Fillers; i++)
            {
                Task.Factory.StartNew(() => Interlocked.Increment(ref fillersRun), CancellationToken.None, TaskCreationOptions.None, scheduler);
            }

            // Displaces the last filler: the deque holds all 16 fillers, this one waits in the slot and runs first.
            Task.Factory.StartNew(() =>
            {
                Task.Factory.StartNew(() => fromInbox.SetResult(), CancellationToken.None, TaskCreationOptions.PreferFairness, scheduler);
                Task.Factory.StartNew(() => demoted.SetResult(), CancellationToken.None, TaskCreationOptions.None, scheduler);
            }, CancellationToken.None, TaskCreationOptions.None, scheduler);
        }).WithTimeout();

        await fromInbox.Task.WithTimeout("the inbox task");
        await demoted.Task.WithTimeout("the task demoted at the LIFO cap while the deque was full");
        await SchedulerTestHelpers.WaitUntilAsync(() => Volatile.Read(ref fillersRun) == Fillers);
        fillersRun.Should().Be(Fillers);
    }

    /// <summary>A task spawns an older task and then a chain that refills the LIFO slot; returns the links run before the older task.</summary>
    private static async Task<int> RunChainBesideOlderTask(WorkStealingTaskScheduler scheduler)
    {
        int chainRuns = 0;
        int chainRunsWhenOlderRan = -1;
        var olderRan = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);

        void Chain()
        {
            // Each link spawns the next into the LIFO slot until the older task has run (bounded in case it never does).
            if (Volatile.Read(ref chainRunsWhenOlderRan) < 0 && ++chainRuns < 1_000)
            {
                Task.Factory.StartNew(Chain, CancellationToken.None, TaskCreationOptions.None, scheduler);
            }
        }

        await scheduler.Factory.StartNew(() =>
        {
            // The older task goes to the slot, then to the deque when the first link displaces it.
            Task.Factory.StartNew(
                () => { Volatile.Write(ref chainRunsWhenOlderRan, chainRuns); olderRan.SetResult(); },
                CancellationToken.None, TaskCreationOptions.None, scheduler);
            Task.Factory.StartNew(Chain, CancellationToken.None, TaskCreationOptions.None, scheduler);
        }).WithTimeout();

        await olderRan.Task.WithTimeout("the older task");
        return Volatile.Read(ref chainRunsWhenOlderRan);
    }

    private static WorkStealingTaskScheduler CreateOneWorker(int lifoLimit) => new(new WorkStealingTaskSchedulerOptions
    {
        WorkerCount = 1,
        LifoSlotLimit = lifoLimit,
        LocalQueueCapacity = 16,
        FairnessInterval = int.MaxValue, // no fairness turn after the first: the loop's choices below are all the cap's
        // No compensation: a worker preempted for 100 ms while its slot is empty (running a link, before it spawns the
        // next) is a standstill that no rescue marks, and a compensation thread would take the older task from the
        // deque's stealable end ahead of its turn.
        BlockingCompensationDelay = Timeout.InfiniteTimeSpan,
        ThreadNamePrefix = "Test",
    });
}
