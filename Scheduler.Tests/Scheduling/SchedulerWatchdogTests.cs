namespace Scheduler.Tests.Scheduling;

/// <summary>
/// The watchdog thread (SchedulerWatchdog.cs, docs/scheduling.md "Blocked workers and the LIFO slot"): one background
/// thread for the process, a list holding exactly the schedulers with a busy worker, and its lock's waits immune to
/// <see cref="Thread.Interrupt"/> without swallowing an interrupt meant for the caller. Written after a Stryker run over
/// the file (session 48): each test names the mutants it kills.
/// </summary>
[Collection(SerialResourceGroup.Name)] // some hold the watchdog's lock, which would stall other tests' rescues meanwhile
public sealed class SchedulerWatchdogTests
{
    private static readonly TimeSpan Bound = SchedulerTestHelpers.Timeout;

    // Mutants: the thread never started (`s_thread is null` negated), was started again by every constructor (its
    // reference never published), was a foreground thread (a process whose last scheduler is gone could not exit), or
    // unnamed (a dump or a profiler shows what it is by its name).
    [Fact]
    public void Schedulers_share_one_named_background_watchdog_thread()
    {
        using var first = SchedulerTestHelpers.DisposeBoundedOnExit(SchedulerTestHelpers.Create(1));
        Thread? watchdog = SchedulerWatchdog.WatchdogThread;
        using var second = SchedulerTestHelpers.DisposeBoundedOnExit(SchedulerTestHelpers.Create(1));

        watchdog.Should().NotBeNull("the first constructor starts it");
        SchedulerWatchdog.WatchdogThread.Should().BeSameAs(watchdog, "one thread for the process");
        watchdog!.IsAlive.Should().BeTrue();
        watchdog.IsBackground.Should().BeTrue("it must not keep the process alive");
        watchdog.Name.Should().Be("WorkStealing watchdog");
    }

    // Mutants: a tick that found the scheduler idle kept it listed (the tick's result negated; the removal's condition
    // made `&&`, negated or reduced to the armed flag; the removal itself gone). The watchdog then looked at an idle
    // scheduler every 10 ms forever, where docs promise no CPU while idle (the thread blocks with nothing listed).
    [Fact]
    public async Task A_scheduler_whose_workers_all_went_idle_leaves_the_list_and_a_busy_one_returns_to_it()
    {
        WorkStealingTaskScheduler scheduler = SchedulerTestHelpers.Create(2);
        await using var dispose = SchedulerTestHelpers.DisposeWithin(scheduler);

        bool listedWhileBusy = await scheduler.Factory.StartNew(() =>
        {
            Thread.Sleep(WorkStealingTaskScheduler.WatchdogPeriod * 3); // ticks in between see it busy
            return SchedulerWatchdog.IsWatching(scheduler);
        }).WithTimeout("the busy task", Bound);
        listedWhileBusy.Should().BeTrue("a busy worker keeps its scheduler on the list");

        await SchedulerTestHelpers.WaitUntilAsync(() => !SchedulerWatchdog.IsWatching(scheduler));
        SchedulerWatchdog.IsWatching(scheduler).Should().BeFalse("the tick that found every worker idle takes it off");
        scheduler.IsWatchdogArmed.Should().BeFalse();

        bool listedAgain = await scheduler.Factory.StartNew(() => SchedulerWatchdog.IsWatching(scheduler)).WithTimeout("the second task", Bound);
        listedAgain.Should().BeTrue("the first worker to turn busy re-arms the watchdog and lists the scheduler again");
    }

    // Mutant: Unwatch did not remove the scheduler, which then stayed listed until a later tick noticed it had
    // terminated. Dispose returns after its last worker took it off the list: nothing of the watchdog holds it from then on.
    [Fact]
    public void A_disposed_scheduler_is_off_the_list_when_dispose_returns()
    {
        WorkStealingTaskScheduler scheduler = SchedulerTestHelpers.Create(2);
        using var blocking = new ManualResetEventSlim();
        using var release = new ManualResetEventSlim();
        Task busy = scheduler.Factory.StartNew(() =>
        {
            blocking.Set();
            release.Wait(Bound);
        });
        blocking.Wait(Bound).Should().BeTrue();
        SpinWait.SpinUntil(() => SchedulerWatchdog.IsWatching(scheduler), Bound).Should().BeTrue("a busy worker lists it");

        // Disposed while the worker is still busy, so no tick can find the scheduler idle and unlist it first: the worker
        // exits once released, and the watchdog's next tick is up to a period away, so what takes it off the list before
        // Dispose returns is the last worker's Unwatch. Read on the disposing thread, the moment Dispose returns.
        Task<bool> listedAfterDispose = Task.Factory.StartNew(() =>
        {
            SchedulerTestHelpers.DisposeBounded(scheduler);
            return SchedulerWatchdog.IsWatching(scheduler);
        }, CancellationToken.None, TaskCreationOptions.LongRunning, TaskScheduler.Default);
        Thread.Sleep(WorkStealingTaskScheduler.WatchdogPeriod * 3); // Dispose waits for the busy worker meanwhile
        SchedulerWatchdog.IsWatching(scheduler).Should().BeTrue("the worker is still busy");
        release.Set();

        listedAfterDispose.Wait(Bound).Should().BeTrue();
        busy.IsCompleted.Should().BeTrue();
        listedAfterDispose.Result.Should().BeFalse("the last worker to exit takes its scheduler off the list");
    }

    // Mutants: Watch or Unwatch swallowed an interrupt their lock's wait met (the Restore after the lock gone), or
    // Unwatch raised one nobody sent (its flag starting true). The lock is held here until the caller blocks on it, so
    // a pending interrupt fires there; afterwards the caller's next interruptible wait must throw, once, as it would have.
    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void An_interrupt_met_on_the_watchdogs_lock_stays_pending_for_the_caller(bool watch)
    {
        WorkStealingTaskScheduler scheduler = SchedulerTestHelpers.Create(1);
        SchedulerTestHelpers.DisposeBounded(scheduler); // terminated: the next tick drops what Watch adds

        (bool Blocked, bool Interrupted) outcome = SchedulerTestHelpers.RunOnNewThread(() =>
        {
            bool raised = false;
            var caller = new Thread(() =>
            {
                Thread.CurrentThread.Interrupt();
                if (watch)
                {
                    SchedulerWatchdog.Watch(scheduler);
                }
                else
                {
                    SchedulerWatchdog.Unwatch(scheduler);
                }

                try
                {
                    Thread.Sleep(Bound); // throws at once if the interrupt is still pending
                }
                catch (ThreadInterruptedException)
                {
                    raised = true;
                }
            }) { IsBackground = true, Name = "Watchdog lock caller" };

            bool blocked;
            using (SchedulerWatchdog.LockForTests.EnterScope())
            {
                caller.Start();
                blocked = SpinWait.SpinUntil(() => (caller.ThreadState & ThreadState.WaitSleepJoin) != 0, Bound);
                Thread.Sleep(20); // the interrupt's throw and the retry's second block happen meanwhile
            }

            bool joined = caller.Join(TimeSpan.FromSeconds(10));
            if (!joined)
            {
                caller.Interrupt(); // a caller that lost the interrupt sleeps the whole bound otherwise
                caller.Join();
            }

            return (blocked, joined && raised);
        });

        outcome.Blocked.Should().BeTrue("the caller met the lock held");
        outcome.Interrupted.Should().BeTrue("the interrupt the lock's wait met is raised again for the caller's next wait");
    }

    // Mutant: Unwatch's interrupt flag started true, so every call raised an interrupt nobody sent: the caller (a worker
    // exiting, or Dispose's thread) then had its next wait thrown out of.
    [Fact]
    public void Unwatch_raises_no_interrupt_of_its_own()
    {
        WorkStealingTaskScheduler scheduler = SchedulerTestHelpers.Create(1);
        SchedulerTestHelpers.DisposeBounded(scheduler);

        bool slept = SchedulerTestHelpers.RunOnNewThread(() =>
        {
            SchedulerWatchdog.Unwatch(scheduler);
            try
            {
                Thread.Sleep(1);
                return true;
            }
            catch (ThreadInterruptedException)
            {
                return false;
            }
        });

        slept.Should().BeTrue("no interrupt was sent");
    }

    // Mutant (uncovered before): the pass array's growth took the smaller of the count and twice the length, so with
    // more than eight schedulers busy at once the copy overran the array and the exception ended the watchdog thread
    // (and the process). Ten schedulers each need a rescue at the same time; all ten get it.
    [Fact]
    public async Task Ten_schedulers_needing_a_rescue_at_once_all_get_it()
    {
        const int Schedulers = 10;
        WorkStealingTaskScheduler[] schedulers = [.. Enumerable.Range(0, Schedulers).Select(_ => SchedulerTestHelpers.CreateWithoutCompensation(2))];
        try
        {
            using var go = new ManualResetEventSlim();
            Task<bool>[] parents = [.. schedulers.Select(scheduler => scheduler.Factory.StartNew(() =>
            {
                go.Wait(Bound);
                using var childRan = new ManualResetEventSlim();
                scheduler.Factory.StartNew(childRan.Set); // to the LIFO slot: only a rescue lets the idle peer run it
                return childRan.Wait(Bound);
            }))];

            go.Set();
            bool[] rescued = await Task.WhenAll(parents).WithTimeout("the ten blocked parents", Bound);
            rescued.Should().AllSatisfy(r => r.Should().BeTrue("each child ran on its scheduler's idle peer"));
            schedulers.Should().AllSatisfy(s => s.LifoRescues.Should().BeGreaterThanOrEqualTo(1));
            SchedulerWatchdog.WatchdogThread!.IsAlive.Should().BeTrue();
        }
        finally
        {
            foreach (WorkStealingTaskScheduler scheduler in schedulers)
            {
                SchedulerTestHelpers.DisposeBounded(scheduler);
            }
        }
    }
}
