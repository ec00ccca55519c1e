using System.Collections.Concurrent;

namespace Scheduler.Tests.Scheduling;

/// <summary>API.md promises about the scheduler that no other test pinned down on its own.</summary>
public sealed class SchedulingContractTests
{
    [Fact]
    public async Task Options_default_to_the_documented_values()
    {
        // API.md: one worker per core. docs/scheduling.md's knob table: the rest.
        var options = new WorkStealingTaskSchedulerOptions();
        options.WorkerCount.Should().Be(Environment.ProcessorCount);
        options.ThreadNamePrefix.Should().Be("WorkStealing");
        options.SpinIterations.Should().Be(512);
        options.FairnessInterval.Should().Be(61);
        options.LifoSlotLimit.Should().Be(3);
        options.LocalQueueCapacity.Should().Be(256);
        options.UseBackgroundThreads.Should().BeTrue();
        options.UseSynchronizationContext.Should().BeFalse();

        var scheduler = new WorkStealingTaskScheduler(options);
        await using var disposeScheduler = SchedulerTestHelpers.DisposeWithin(scheduler);
        scheduler.WorkerCount.Should().Be(Environment.ProcessorCount);
        string? name = await scheduler.Factory.StartNew(() => Thread.CurrentThread.Name).WithTimeout();
        name.Should().MatchRegex(@"^WorkStealing #\d+$", "workers are named {prefix} #i");
    }

    [Fact]
    public async Task A_LIFO_slot_limit_of_zero_leaves_spawned_work_stealable_at_once()
    {
        // docs/scheduling.md: "0 disables the LIFO slot". The slot is private to its worker; with it off, a task spawned
        // by a running task goes to the deque, where an idle peer steals it while the spawner blocks. (With the slot on,
        // only the watchdog's rescue through the global queue would get it to the peer: no steal is counted then.)
        var scheduler = new WorkStealingTaskScheduler(new WorkStealingTaskSchedulerOptions { WorkerCount = 2, LifoSlotLimit = 0, ThreadNamePrefix = "NoLifo" });
        await using var disposeScheduler = SchedulerTestHelpers.DisposeWithin(scheduler);
        (Thread Spawner, Thread Child) threads = await scheduler.Factory.StartNew(() =>
        {
            using var ran = new ManualResetEventSlim();
            Thread? child = null;
            Task.Factory.StartNew(() =>
            {
                child = Thread.CurrentThread;
                ran.Set();
            }, CancellationToken.None, TaskCreationOptions.None, scheduler);

            // Blocks this worker without inlining (only Task.Wait inlines): a peer must take the child.
            ran.Wait(SchedulerTestHelpers.Timeout).Should().BeTrue();
            return (Thread.CurrentThread, child!);
        }).WithTimeout();

        threads.Child.Should().NotBeSameAs(threads.Spawner);
        scheduler.GetStatistics().TasksStolen.Should().BePositive("the peer stole the child from the spawner's deque");
    }

    [Fact]
    public async Task Factory_continuations_run_on_the_scheduler()
    {
        var scheduler = SchedulerTestHelpers.Create(2);
        await using var disposeScheduler = SchedulerTestHelpers.DisposeWithin(scheduler);
        scheduler.Factory.Scheduler.Should().BeSameAs(scheduler);

        // Antecedents that complete on the ThreadPool: the continuations must still run on this scheduler's workers.
        var gate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        Task<int> antecedent = Task.Run(async () =>
        {
            await gate.Task;
            return 1;
        });
        Task<bool> all = scheduler.Factory.ContinueWhenAll([antecedent], _ => OnScheduler());
        Task<bool> any = scheduler.Factory.ContinueWhenAny([antecedent], _ => OnScheduler());
        gate.SetResult();

        (await all.WithTimeout()).Should().BeTrue("ContinueWhenAll from the scheduler's Factory runs on it");
        (await any.WithTimeout()).Should().BeTrue("ContinueWhenAny from the scheduler's Factory runs on it");

        // ContinueWith inside a task of the scheduler picks it up as TaskScheduler.Current.
        bool nested = await scheduler.Factory.StartNew(() => Task.Run(() => Thread.Sleep(1)).ContinueWith(_ => OnScheduler())).Unwrap().WithTimeout();
        nested.Should().BeTrue();

        bool OnScheduler() => scheduler.IsWorkerThread && TaskScheduler.Current == scheduler;
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task Dispose_runs_queued_work_and_returns_only_after_the_workers_exited(bool async)
    {
        const int Workers = 2;
        var scheduler = SchedulerTestHelpers.Create(Workers);

        // One task per worker, held at a barrier: each must be on its own worker, so we see every worker thread.
        using var barrier = new Barrier(Workers);
        var threads = new ConcurrentBag<Thread>();
        using var release = new ManualResetEventSlim();
        Task[] holders = Enumerable.Range(0, Workers).Select(_ => scheduler.Factory.StartNew(() =>
        {
            threads.Add(Thread.CurrentThread);
            barrier.SignalAndWait(SchedulerTestHelpers.Timeout).Should().BeTrue();
            release.Wait(SchedulerTestHelpers.Timeout);
        })).ToArray();
        SpinWait.SpinUntil(() => threads.Count == Workers, SchedulerTestHelpers.Timeout).Should().BeTrue();
        int ran = 0;
        Task[] queued = Enumerable.Range(0, 100).Select(_ => scheduler.Factory.StartNew(() => Interlocked.Increment(ref ran))).ToArray();

        Task disposing = async ? scheduler.DisposeAsync().AsTask() : Task.Run(scheduler.Dispose);
        release.Set();
        await disposing.WithTimeout();

        ran.Should().Be(100, "work queued before Dispose still runs");
        queued.Concat(holders).Should().OnlyContain(t => t.IsCompletedSuccessfully);
        threads.Distinct().Should().HaveCount(Workers);
        if (async)
        {
            // DisposeAsync completes when the last worker left its loop; the threads end a moment later.
            threads.Should().OnlyContain(t => t.Join(SchedulerTestHelpers.Timeout));
        }
        else
        {
            threads.Should().OnlyContain(t => !t.IsAlive, "Dispose joins the workers");
        }
    }

    [Fact]
    public async Task Task_Wait_on_the_only_worker_inlines_the_still_queued_task()
    {
        // Not disposed when the wait hangs (that worker would never return): its thread is a background thread.
        var scheduler = SchedulerTestHelpers.Create(1);
        bool sameThread = await scheduler.Factory.StartNew(() =>
        {
            Thread parent = Thread.CurrentThread;
            Thread? ranOn = null;
            Task child = Task.Factory.StartNew(() => ranOn = Thread.CurrentThread, CancellationToken.None, TaskCreationOptions.None, scheduler);

            // No peer exists: without inlining this wait never returns. (Only the untimed, uncancellable Wait()
            // inlines: the TPL itself never inlines a wait with a timeout or a token.)
            child.Wait();
            return ranOn == parent;
        }).WithTimeout(TimeSpan.FromSeconds(10));

        sameThread.Should().BeTrue("Task.Wait on a worker runs the still-queued task inline");
        scheduler.GetStatistics().TasksInlined.Should().BePositive();
        await SchedulerTestHelpers.DisposeWithin(scheduler).DisposeAsync();
    }

    [Fact]
    public async Task PreferFairness_work_queued_from_a_worker_runs_first_in_first_out()
    {
        // No compensation: a worker held off its core for 100 ms among its spawns looks like a standstill, and a
        // compensation thread taking from its inbox beside it would interleave the order.
        var scheduler = SchedulerTestHelpers.CreateWithoutCompensation(1);
        await using var disposeScheduler = SchedulerTestHelpers.DisposeWithin(scheduler);
        const int Count = 50;
        var order = new ConcurrentQueue<int>();
        Task[] tasks = await scheduler.Factory.StartNew(() => Enumerable.Range(0, Count)
            .Select(i => Task.Factory.StartNew(() => order.Enqueue(i), CancellationToken.None, TaskCreationOptions.PreferFairness, scheduler))
            .ToArray()).WithTimeout();
        await Task.WhenAll(tasks).WithTimeout();
        order.Should().Equal(Enumerable.Range(0, Count));
    }

    // Found by this test: a worker moved up to 15 extra global-queue items into its deque in arrival order and popped
    // them LIFO, so outside work ran 0, 15..1, 16, 31..17. The fairness turn (every FairnessInterval tasks a worker takes
    // the global queue's next item before its deque) may still run one item ahead of up to 15 older ones that already
    // wait in the deque, as in tokio; with 50 tasks and an interval of 1,000 none comes, so the order must be exact.
    [Fact]
    public async Task PreferFairness_work_queued_from_outside_runs_first_in_first_out()
    {
        // No compensation: the only worker blocks until all are queued, and a test thread held off its core for 100 ms
        // meanwhile would let a compensation thread start on the queue, beside the worker once released.
        var scheduler = new WorkStealingTaskScheduler(new WorkStealingTaskSchedulerOptions
        {
            WorkerCount = 1,
            FairnessInterval = 1_000,
            BlockingCompensationDelay = Timeout.InfiniteTimeSpan,
        });
        await using var disposeScheduler = SchedulerTestHelpers.DisposeWithin(scheduler);
        using var release = new ManualResetEventSlim();
        Task blocker = scheduler.Factory.StartNew(() => release.Wait(SchedulerTestHelpers.Timeout));
        const int Count = 50;
        var order = new ConcurrentQueue<int>();
        Task[] tasks = Enumerable.Range(0, Count)
            .Select(i => scheduler.Factory.StartNew(() => order.Enqueue(i), CancellationToken.None, TaskCreationOptions.PreferFairness, scheduler))
            .ToArray();
        release.Set();
        await Task.WhenAll(tasks.Append(blocker)).WithTimeout();
        order.Should().Equal(Enumerable.Range(0, Count));
    }
}
