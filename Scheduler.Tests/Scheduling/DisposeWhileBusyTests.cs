namespace Scheduler.Tests.Scheduling;

/// <summary>
/// Dispose while a worker is still busy: the idle workers must stay available to that worker's work until it is done.
/// Before, an idle worker exited at once when Dispose found nothing queued, so work the busy worker exposed to peers
/// afterwards (and then blocked on) had nobody to run it: a hang that the same program without Dispose never has.
/// </summary>
public sealed class DisposeWhileBusyTests
{
    // How long a blocked worker waits for work a peer must run: a peer held off its core on a loaded machine can take
    // seconds, and a wait cut short fails the test. Twice this stays within the bounded waits on the parent and Dispose.
    private static readonly TimeSpan BlockLimit = TimeSpan.FromSeconds(10);

    // How long the idle worker gets to (wrongly) exit before the busy one exposes work: no event marks that exit.
    private static readonly TimeSpan ExitWindow = TimeSpan.FromMilliseconds(50);

    [Fact]
    public async Task Work_a_busy_worker_spawns_and_blocks_on_during_Dispose_is_run_by_a_peer()
    {
        var scheduler = SchedulerTestHelpers.Create(2);
        using var started = new ManualResetEventSlim();
        using var gate = new ManualResetEventSlim();
        using var released = new SemaphoreSlim(0);

        Task<bool> parent = scheduler.Factory.StartNew(() =>
        {
            started.Set();
            gate.Wait(SchedulerTestHelpers.Timeout);
            // Two children: the first is displaced into the (stealable) deque, the second sits in the LIFO slot.
            scheduler.Factory.StartNew(() => released.Release());
            scheduler.Factory.StartNew(() => released.Release());
            return released.Wait(BlockLimit) && released.Wait(BlockLimit); // sync-over-async on a worker
        });

        started.Wait(SchedulerTestHelpers.Timeout).Should().BeTrue();
        Task disposing = scheduler.DisposeAsync().AsTask();
        Thread.Sleep(ExitWindow);
        gate.Set();

        (await parent.WithTimeout()).Should().BeTrue("the idle peer must still run the children while Dispose drains");
        await disposing.WithTimeout();
    }

    [Fact]
    public async Task A_continuation_targeted_at_an_idle_worker_during_Dispose_runs_while_the_busy_one_waits_for_it()
    {
        var scheduler = SchedulerTestHelpers.Create(2);
        using var started = new ManualResetEventSlim();
        using var gate = new ManualResetEventSlim();
        int busyWorker = -1;

        Task<bool> waiter = scheduler.Factory.StartNew(() =>
        {
            scheduler.TryGetCurrentWorkerIndex(out busyWorker);
            started.Set();
            gate.Wait(SchedulerTestHelpers.Timeout);
            using var resumed = new ManualResetEventSlim();
            // A foreign thread (an I/O or timer thread) completes into the other worker's inbox.
            var foreign = new Thread(() => scheduler.EnqueueToWorker(1 - busyWorker, new SchedulerTestHelpers.RecordingWorkItem(resumed.Set)));
            foreign.Start();
            foreign.Join();
            return resumed.Wait(BlockLimit);
        });

        started.Wait(SchedulerTestHelpers.Timeout).Should().BeTrue();
        Task disposing = scheduler.DisposeAsync().AsTask();
        Thread.Sleep(ExitWindow);
        gate.Set();

        (await waiter.WithTimeout()).Should().BeTrue("work queued to a live scheduler's worker must run while the scheduler drains");
        await disposing.WithTimeout();
    }

    /// <summary>
    /// A worker that takes a task while idle holds it, for an instant, where no queue shows it while its idle flag still
    /// says it has nothing. A peer that decided to exit in that instant (Dispose requested, every queue empty, nobody
    /// busy) left the task's work to nobody: the task spawned a child and blocked on it, and the child, rescued from
    /// the LIFO slot, waited in the global queue for a worker that had gone. The seam holds the worker in that instant.
    /// </summary>
    [Fact]
    public async Task A_task_taken_by_an_idle_worker_as_Dispose_begins_still_has_a_peer_for_the_work_it_blocks_on()
    {
        var scheduler = SchedulerTestHelpers.Create(2, spin: 0);
        using var holding = new ManualResetEventSlim();
        using var released = new SemaphoreSlim(0);

        // Parked, both: the task below is then taken by a worker turning busy from idle, which is where the hook runs.
        SpinWait.SpinUntil(() => scheduler.IsWorkerParked(0) && scheduler.IsWorkerParked(1), SchedulerTestHelpers.Timeout)
            .Should().BeTrue("both workers have nothing to do");
        int armed = 1;
        scheduler.TurnBusyHookForTests = () =>
        {
            if (Interlocked.Exchange(ref armed, 0) == 0)
            {
                return;
            }

            scheduler.TryGetCurrentWorkerIndex(out int self);
            holding.Set();
            // Hold the task until the peer has exited, or for long enough that it would have: no event marks a non-exit.
            scheduler.WorkerThreads[1 - self]!.Join(ExitWindow * 10);
        };

        Task<bool> parent = scheduler.Factory.StartNew(() =>
        {
            scheduler.Factory.StartNew(() => released.Release()); // to the LIFO slot, which the watchdog rescues
            return released.Wait(BlockLimit); // sync-over-async on a worker
        });

        holding.Wait(SchedulerTestHelpers.Timeout).Should().BeTrue("an idle worker takes the task");
        Task disposing = scheduler.DisposeAsync().AsTask();

        (await parent.WithTimeout()).Should().BeTrue("a task queued before Dispose runs with the peers it had, and so does what it spawns");
        await disposing.WithTimeout();
    }

    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(3)]
    [InlineData(4)]
    public async Task Dispose_racing_spawning_blocking_and_foreign_completions_runs_everything_once(int seed)
    {
        var random = new Random(seed);
        var deadline = DateTime.UtcNow + TimeSpan.FromMilliseconds(600);
        int rounds = 0;
        while (rounds < 5 || DateTime.UtcNow < deadline)
        {
            rounds++;
            int workers = random.Next(2, 4);
            var scheduler = new WorkStealingTaskScheduler(new WorkStealingTaskSchedulerOptions
            {
                WorkerCount = workers,
                SpinIterations = random.Next(2) == 0 ? 0 : 30,
                ThreadNamePrefix = "DisposeStress",
            });
            var counts = new Counts();

            void Spawn(int depth)
            {
                Interlocked.Increment(ref counts.Created);
                _ = scheduler.Factory.StartNew(() =>
                {
                    Interlocked.Increment(ref counts.Ran);
                    if (depth > 0)
                    {
                        Spawn(depth - 1);
                        Spawn(depth - 1);
                    }
                });
            }

            // One blocker at a time (more could block every worker, a deadlock of the test's own making): once the gate
            // opens, it forks two children and blocks on them, as sync-over-async code does.
            using var gate = new ManualResetEventSlim();
            Interlocked.Increment(ref counts.Created);
            Task blocker = scheduler.Factory.StartNew(() =>
            {
                Interlocked.Increment(ref counts.Ran);
                gate.Wait(SchedulerTestHelpers.Timeout);
                using var done = new SemaphoreSlim(0);
                for (int i = 0; i < 2; i++)
                {
                    Interlocked.Increment(ref counts.Created);
                    _ = scheduler.Factory.StartNew(() =>
                    {
                        Interlocked.Increment(ref counts.Ran);
                        Spawn(3);
                        done.Release();
                    });
                }

                if (!done.Wait(BlockLimit) || !done.Wait(BlockLimit))
                {
                    Interlocked.Increment(ref counts.Stranded);
                }
            });

            await scheduler.Factory.StartNew(() =>
            {
                for (int i = 0; i < 4; i++)
                {
                    Spawn(6);
                }
            }).WithTimeout();

            // A foreign thread keeps completing into every worker's inbox until the scheduler has terminated.
            var foreign = new Thread(() =>
            {
                for (int i = 0; i < 2_000 && !scheduler.IsTerminated; i++)
                {
                    Interlocked.Increment(ref counts.Created);
                    scheduler.EnqueueToWorker(i % workers, new SchedulerTestHelpers.RecordingWorkItem(() => Interlocked.Increment(ref counts.Ran)));
                }
            });
            foreign.Start();

            Thread.SpinWait(random.Next(20_000));
            bool gateFirst = random.Next(2) == 0;
            if (gateFirst)
            {
                gate.Set();
            }

            Task[] disposers = Enumerable.Range(0, 2).Select(i => Task.Run(() =>
            {
                if (i == 0)
                {
                    scheduler.Dispose();
                }
                else
                {
                    scheduler.DisposeAsync().AsTask().Wait();
                }
            })).ToArray();
            Thread.SpinWait(random.Next(20_000));
            gate.Set();
            (await Task.WhenAll(disposers).WaitAsync(SchedulerTestHelpers.Timeout).ContinueWith(t => t.IsCompletedSuccessfully)).Should().BeTrue($"Dispose must not hang (round {rounds})");
            foreign.Join();
            blocker.IsCompletedSuccessfully.Should().BeTrue();

            await SchedulerTestHelpers.WaitUntilAsync(() => Volatile.Read(ref counts.Ran) == Volatile.Read(ref counts.Created));
            counts.Ran.Should().Be(counts.Created, $"everything queued runs exactly once (round {rounds})");
            counts.Stranded.Should().Be(0, $"no task waits for work nobody runs (round {rounds})");
            ((Action)(() => scheduler.Factory.StartNew(() => { }))).Should().Throw<TaskSchedulerException>().WithInnerException<ObjectDisposedException>();
        }
    }

    private sealed class Counts
    {
        public int Created;
        public int Ran;
        public int Stranded;
    }
}
