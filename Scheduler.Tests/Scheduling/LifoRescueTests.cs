using System.Diagnostics;

namespace Scheduler.Tests.Scheduling;

/// <summary>
/// The LIFO slot is private to its worker, so a task left there by a worker that then blocks would wait for that
/// worker forever, however idle its peers (found by the first test below: the child never ran). A watchdog moves the
/// slot's task of a worker that stopped making progress to the global queue; the owner never uses an interlocked
/// instruction for the slot, so the rescue races it through an asymmetric Dekker protocol, which the stress test
/// below hammers.
/// </summary>
public sealed class LifoRescueTests
{
    private static readonly TimeSpan BlockLimit = TimeSpan.FromSeconds(10);

    [Theory]
    [InlineData(2)]
    [InlineData(4)]
    public async Task A_task_spawned_into_the_lifo_slot_runs_while_its_worker_blocks(int workers)
    {
        var scheduler = SchedulerTestHelpers.CreateWithoutCompensation(workers);
        await using var disposeScheduler = SchedulerTestHelpers.DisposeWithin(scheduler);
        using var released = new SemaphoreSlim(0);
        int childWorker = -1;
        long childRanAt = 0;

        Task<(bool Released, int Worker, long SpawnedAt)> parent = scheduler.Factory.StartNew(() =>
        {
            scheduler.TryGetCurrentWorkerIndex(out int parentWorker);
            long spawnedAt = Stopwatch.GetTimestamp();
            // The only task this one spawns: it goes to the LIFO slot, not to the stealable deque.
            scheduler.Factory.StartNew(() =>
            {
                childRanAt = Stopwatch.GetTimestamp();
                scheduler.TryGetCurrentWorkerIndex(out childWorker);
                released.Release();
            });

            bool ok = released.Wait(BlockLimit); // blocks the worker, as sync-over-async code does
            return (ok, parentWorker, spawnedAt);
        });

        (bool ok, int parentWorker, long spawnedAt) = await parent.WithTimeout();
        ok.Should().BeTrue("an idle peer must run the child while its spawner blocks");
        childWorker.Should().NotBe(parentWorker);

        // Timed from the spawn to the child's start, inside the child: the blocked parent's own wake-up after the release
        // is one more thread waiting for a core, which a loaded machine can delay past the bound by itself.
        Stopwatch.GetElapsedTime(spawnedAt, childRanAt).Should().BeLessThan(TimeSpan.FromSeconds(2), "the watchdog looks every {0} ms", WorkStealingTaskScheduler.WatchdogPeriod.TotalMilliseconds);
        scheduler.LifoRescues.Should().BeGreaterThanOrEqualTo(1);
    }

    [Fact]
    public async Task A_continuation_woken_into_the_lifo_slot_runs_while_its_worker_blocks()
    {
        var scheduler = SchedulerTestHelpers.Create(2);
        await using var disposeScheduler = SchedulerTestHelpers.DisposeWithin(scheduler);
        using var resumed = new ManualResetEventSlim();
        var signal = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);

        // An async method on the scheduler awaits the signal; completing it from a worker queues the continuation to
        // that worker's LIFO slot. The outer task completes once the method is suspended at its await.
        Task waiter = await scheduler.Factory.StartNew(async () =>
        {
            await signal.Task;
            resumed.Set();
        }).WithTimeout();

        bool ok = await scheduler.Factory.StartNew(() =>
        {
            signal.SetResult();
            return resumed.Wait(BlockLimit);
        }).WithTimeout();

        ok.Should().BeTrue("a peer must resume the awaiting method while the worker that woke it blocks");
        await waiter.WithTimeout();
    }

    [Fact]
    public async Task Work_left_in_the_deque_of_a_blocked_worker_without_a_wake_up_reaches_a_parked_peer()
    {
        var scheduler = SchedulerTestHelpers.CreateWithoutCompensation(2);
        await using var disposeScheduler = SchedulerTestHelpers.DisposeWithin(scheduler);
        using var ran = new ManualResetEventSlim();
        int ranOn = -1;

        (bool Parked, bool Ran, int Worker) outcome = await scheduler.Factory.StartNew(() =>
        {
            scheduler.TryGetCurrentWorkerIndex(out int self);
            int peer = 1 - self;

            // With nothing to do the peer parks; from then on only a wake-up brings it back.
            bool parked = SpinWait.SpinUntil(() => scheduler.IsWorkerParked(peer), BlockLimit);

            // The LIFO cap's demotion puts a task into the deque without waking anyone (its owner is about to run it).
            // Should the owner block instead, say on that very task, the watchdog must wake the peer to steal it.
            Action<object?> release = _ =>
            {
                scheduler.TryGetCurrentWorkerIndex(out ranOn);
                ran.Set();
            };
            scheduler.CurrentWorker!.DemoteToDeque(WorkItem.ForCallback(release, null));
            return (parked, ran.Wait(BlockLimit), self);
        }).WithTimeout();

        outcome.Parked.Should().BeTrue("the peer had nothing to do");
        outcome.Ran.Should().BeTrue("a busy worker that stops making progress with stealable work gets a parked peer woken");
        ranOn.Should().Be(1 - outcome.Worker);
    }

    [Fact]
    public async Task The_watchdog_runs_only_while_a_worker_is_busy()
    {
        var scheduler = SchedulerTestHelpers.Create(2);
        await using var disposeScheduler = SchedulerTestHelpers.DisposeWithin(scheduler);
        await scheduler.Factory.StartNew(() => { }).WithTimeout();

        await SchedulerTestHelpers.WaitUntilAsync(() => !scheduler.IsWatchdogArmed);
        scheduler.IsWatchdogArmed.Should().BeFalse("a tick that finds every worker idle disarms the timer (no CPU while idle)");

        bool armedWhileBusy = await scheduler.Factory.StartNew(() =>
        {
            // Longer than two periods: a tick in between must keep it armed.
            Thread.Sleep(WorkStealingTaskScheduler.WatchdogPeriod * 3);
            return scheduler.IsWatchdogArmed;
        }).WithTimeout();

        armedWhileBusy.Should().BeTrue("the first worker to turn busy re-arms it");
        await SchedulerTestHelpers.WaitUntilAsync(() => !scheduler.IsWatchdogArmed);
        scheduler.IsWatchdogArmed.Should().BeFalse();
    }

    /// <summary>
    /// Rescues race the owner's own use of its slot, as often as a thread can issue them: chains of tasks that each
    /// spawn the next (every step passes through the LIFO slot) and steps that spawn a child and wait for it (the
    /// inline path takes the child back out of the slot). Every task must run exactly once, and every chain finish.
    /// </summary>
    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(3)]
    [InlineData(4)]
    public async Task Rescues_racing_the_owner_never_run_a_task_twice_or_lose_one(int seed)
    {
        const int Steps = 5_000;
        var scheduler = SchedulerTestHelpers.Create(2);
        await using var disposeScheduler = SchedulerTestHelpers.DisposeWithin(scheduler);
        using var stop = new CancellationTokenSource();
        var rescuer = new Thread(() =>
        {
            var random = new Random(seed);
            while (!stop.IsCancellationRequested)
            {
                scheduler.TryRescueLifoSlot(random.Next(2));
                Thread.SpinWait(random.Next(20, 100)); // microseconds, like the barrier: see LifoSlotTests
            }
        }) { IsBackground = true, Name = "LIFO rescuer" };
        rescuer.Start();

        try
        {
            // Rounds until the rescuer has won enough races (it shares two cores with the workers), within a time cap.
            var elapsed = System.Diagnostics.Stopwatch.StartNew();
            for (int round = 0; round < 3 || (scheduler.LifoRescues < 50 && elapsed.Elapsed < TimeSpan.FromSeconds(8)); round++)
            {
                await RunChain(scheduler, Steps);
            }
        }
        finally
        {
            stop.Cancel();
            rescuer.Join();
        }

        scheduler.LifoRescues.Should().BeGreaterThan(0, "the rescuer must have won some races for this test to mean anything");
    }

    private static async Task RunChain(WorkStealingTaskScheduler scheduler, int steps)
    {
        var runs = new int[2 * steps];
        var done = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);

        void Step(int i)
        {
            Interlocked.Increment(ref runs[i]);
            if (i == steps - 1)
            {
                done.TrySetResult();
                return;
            }

            if (i % 2 == 1)
            {
                // Spawn a child and wait for it: inlined when it is still in the slot, run by a peer when rescued.
                Task child = scheduler.Factory.StartNew(() => Interlocked.Increment(ref runs[steps + i]));
                child.Wait();
            }

            scheduler.Factory.StartNew(() => Step(i + 1));
            Thread.SpinWait(i % 7); // the spawned step waits in the slot a moment: the rescuer's window
        }

        _ = scheduler.Factory.StartNew(() => Step(0));
        await done.Task.WithTimeout();
        for (int i = 0; i < steps; i++)
        {
            runs[i].Should().Be(1, "step {0} must run exactly once", i);
            if (i % 2 == 1 && i < steps - 1)
            {
                runs[steps + i].Should().Be(1, "the child of step {0} must run exactly once", i);
            }
        }
    }
}
