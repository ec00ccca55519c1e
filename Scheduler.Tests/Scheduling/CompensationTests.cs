using System.Diagnostics;

namespace Scheduler.Tests.Scheduling;

/// <summary>
/// Blocking compensation (WorkStealingTaskScheduler.Compensation.cs, docs/scheduling.md "Blocking compensation"): once every
/// worker has stood still with work queued, the watchdog starts compensation threads that run the queued work, and they
/// leave when there is none. Every item runs exactly once, nothing runs after <c>Dispose</c> returns, no compensation thread
/// starts while the workers make progress, and none is left behind.
/// </summary>
public sealed class CompensationTests(Xunit.Abstractions.ITestOutputHelper output)
{
    private static readonly TimeSpan Bound = TimeSpan.FromSeconds(20);

    private static WorkStealingTaskScheduler Create(int workers = 2, bool context = false, TimeSpan? delay = null) =>
        new(new WorkStealingTaskSchedulerOptions
        {
            WorkerCount = workers,
            UseBackgroundThreads = true,
            UseSynchronizationContext = context,
            ThreadNamePrefix = "Compensation",
            BlockingCompensationDelay = delay ?? TimeSpan.FromMilliseconds(100),
        });

    // Fork-join trees joined with Wait(CancellationToken), which the BCL never inlines, on every worker at once: only
    // compensation threads can run the children, and those block in their own joins too, so several are needed. Random
    // shapes over seeds; every node runs exactly once and the compensation threads are gone afterwards.
    [Theory]
    [InlineData(1, false)]
    [InlineData(2, false)]
    [InlineData(3, true)]
    [InlineData(4, true)]
    public async Task Non_inlined_fork_join_on_every_worker_runs_each_node_once_and_the_compensation_threads_leave(int seed, bool context)
    {
        var random = new Random(seed);
        WorkStealingTaskScheduler scheduler = Create(context: context);
        using var disposeScheduler = SchedulerTestHelpers.DisposeBoundedOnExit(scheduler);
        using var never = new CancellationTokenSource();
        int nodes = 0;
        var runs = new System.Collections.Concurrent.ConcurrentDictionary<int, int>();
        int depthLimit = random.Next(3, 6);

        int Node(int id, int depth)
        {
            runs.AddOrUpdate(id, 1, (_, n) => n + 1);
            Interlocked.Increment(ref nodes);
            if (depth == depthLimit)
            {
                return 1;
            }

            int fan = 1 + ((id * 7 + depth) % 2);
            var children = new Task<int>[fan];
            for (int i = 0; i < fan; i++)
            {
                int childId = (id * 3) + i + 1;
                children[i] = Task.Factory.StartNew(() => Node(childId, depth + 1), CancellationToken.None, TaskCreationOptions.None, scheduler);
            }

            int sum = 1;
            foreach (Task<int> child in children)
            {
                child.Wait(never.Token); // not inlined by the BCL
                sum += child.Result;
            }

            return sum;
        }

        using var rendezvous = new Barrier(scheduler.WorkerCount);
        Task<int>[] roots = [.. Enumerable.Range(0, scheduler.WorkerCount).Select(w => scheduler.Factory.StartNew(() =>
        {
            rendezvous.SignalAndWait(Bound).Should().BeTrue("each worker takes one root");
            return Node(1_000_000 * (w + 1), 0);
        }))];

        int[] sums = await Task.WhenAll(roots).WithTimeout("the fork-join trees", Bound);
        sums.Sum().Should().Be(Volatile.Read(ref nodes), "every node counted once in its parent's sum");
        runs.Values.Should().OnlyContain(n => n == 1, "no node runs twice");
        scheduler.CompensationThreadsStarted.Should().BeGreaterThan(0, "with every worker joining, only compensation threads could run the children");
        // Every node ran as a task of its own (the roots' tasks run the top nodes); a runner counts a task just after it
        // completed, so the sum catches up a moment after the awaits.
        await WaitUntil(
            () => scheduler.GetStatistics() is var statistics && statistics.TasksExecuted + statistics.TasksInlined >= Volatile.Read(ref nodes),
            "what compensation threads run is counted in TasksExecuted too");
        output.WriteLine($"{nodes} nodes, depth {depthLimit}, {scheduler.CompensationThreadsStarted} compensation thread(s)");

        await WaitUntil(() => scheduler.LiveCompensationThreads == 0, "the compensation threads leave once nothing is queued");
    }

    // What a compensation thread runs sees the scheduler as TaskScheduler.Current (so an await in it comes back to the
    // scheduler), is not on a worker, and sees the scheduler's SynchronizationContext in context mode.
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task Work_run_by_a_compensation_thread_sees_the_scheduler_and_its_awaits_come_back_to_it(bool context)
    {
        WorkStealingTaskScheduler scheduler = Create(workers: 1, context: context);
        using var disposeScheduler = SchedulerTestHelpers.DisposeBoundedOnExit(scheduler);
        using var release = new ManualResetEventSlim();
        var observed = new TaskCompletionSource<(bool OnWorker, TaskScheduler Current, bool ContextIsScheduler, TaskScheduler AfterAwait, bool Background)>(
            TaskCreationOptions.RunContinuationsAsynchronously);

        Task blocker = scheduler.Factory.StartNew(() =>
        {
            // Queued behind this worker, which blocks until it has run: only a compensation thread can.
            Task.Factory.StartNew(
                async () =>
                {
                    bool onWorker = scheduler.IsWorkerThread;
                    TaskScheduler current = TaskScheduler.Current;
                    bool contextIsScheduler = SynchronizationContext.Current?.GetType().Name == "WorkStealingSynchronizationContext";
                    bool background = Thread.CurrentThread.IsBackground;
                    release.Set();
                    await Task.Yield();
                    observed.SetResult((onWorker, current, contextIsScheduler, TaskScheduler.Current, background));
                },
                CancellationToken.None,
                TaskCreationOptions.None,
                scheduler);
            release.Wait(Bound).Should().BeTrue("a compensation thread runs the queued task");
        });

        await blocker.WithTimeout("the blocked worker", Bound);
        var (onWorker, current, contextIsScheduler, afterAwait, background) = await observed.Task.WithTimeout("the compensated task", Bound);
        onWorker.Should().BeFalse("a compensation thread is not a worker");
        current.Should().BeSameAs(scheduler, "it runs as a task of the scheduler");
        contextIsScheduler.Should().Be(context, "context mode gives it the scheduler's SynchronizationContext");
        afterAwait.Should().BeSameAs(scheduler, "its await came back to the scheduler");
        background.Should().BeTrue("a compensation thread never keeps the process alive (kills: TryStartCompensationThread, IsBackground made false)");
        scheduler.CompensationThreadsStarted.Should().BeGreaterThan(0);
    }

    // SynchronizationContext.Send on a compensation thread (context mode) runs the callback there, as it does on a worker.
    // It used to post the callback and block: only a further compensation thread, a standstill later, could run it.
    [Fact]
    public async Task Send_on_a_compensation_thread_runs_inline_instead_of_waiting_for_another_thread()
    {
        WorkStealingTaskScheduler scheduler = Create(workers: 1, context: true);
        using var disposeScheduler = SchedulerTestHelpers.DisposeBoundedOnExit(scheduler);
        using var release = new ManualResetEventSlim();
        var sent = new TaskCompletionSource<(int Caller, int Callee)>(TaskCreationOptions.RunContinuationsAsynchronously);

        Task blocker = scheduler.Factory.StartNew(() =>
        {
            Task.Factory.StartNew(
                () =>
                {
                    int caller = Environment.CurrentManagedThreadId;
                    int callee = -1;
                    SynchronizationContext.Current!.Send(_ => callee = Environment.CurrentManagedThreadId, null);
                    sent.SetResult((caller, callee));
                    release.Set();
                },
                CancellationToken.None,
                TaskCreationOptions.None,
                scheduler);
            release.Wait(Bound).Should().BeTrue("a compensation thread runs the queued task");
        });

        await blocker.WithTimeout("the blocked worker", Bound);
        (int caller, int callee) = await sent.Task.WithTimeout("the Send", Bound);
        callee.Should().Be(caller, "Send on one of the scheduler's own threads runs the callback on it");
        scheduler.CompensationThreadsStarted.Should().Be(1, "nothing waited for a second compensation thread");
    }

    // BlockingCompensationDelay: infinite turns compensation off (the blocked worker stays blocked: its child runs only
    // once the join gives up), and a delay longer than the standstill starts nothing either; the default, on the same
    // program, runs the child while the worker still waits.
    [Theory]
    [InlineData(-1, false)] // Timeout.InfiniteTimeSpan
    [InlineData(60_000, false)]
    [InlineData(100, true)]
    public async Task The_compensation_delay_option_decides_whether_a_blocked_worker_gets_a_compensation_thread(int delayMs, bool compensated)
    {
        WorkStealingTaskScheduler scheduler = Create(workers: 1, delay: TimeSpan.FromMilliseconds(delayMs));
        using var disposeScheduler = SchedulerTestHelpers.DisposeBoundedOnExit(scheduler);
        using var giveUp = new CancellationTokenSource();
        bool childRanDuringTheJoin = false;

        Task<bool> join = scheduler.Factory.StartNew(() =>
        {
            Task child = Task.Factory.StartNew(() => { }, CancellationToken.None, TaskCreationOptions.None, scheduler);
            try
            {
                child.Wait(giveUp.Token); // not inlined: only a compensation thread can run the child meanwhile
                childRanDuringTheJoin = true;
            }
            catch (OperationCanceledException)
            {
            }

            return child.IsCompleted;
        });

        // A second and a half of standstill, fifteen times the default delay, where no thread must come. Where one must,
        // the join gives up only after 15 s: it ends as soon as the child ran, and on a loaded machine the watchdog's looks
        // and the thread's start can come seconds late, past a give-up of 1.5 s.
        giveUp.CancelAfter(compensated ? TimeSpan.FromSeconds(15) : TimeSpan.FromMilliseconds(1_500));
        await join.WithTimeout("the join", Bound);
        childRanDuringTheJoin.Should().Be(compensated);
        scheduler.CompensationThreadsStarted.Should().Be(compensated ? 1 : 0);
    }

    // Workers that make progress — a busy stream of short tasks and awaits, never blocking — get no compensation thread,
    // however long it lasts: the watchdog's standstill test looks at progress, not at how busy the workers are.
    [Fact]
    public async Task Busy_workers_that_make_progress_get_no_compensation_thread()
    {
        WorkStealingTaskScheduler scheduler = Create();
        using var disposeScheduler = SchedulerTestHelpers.DisposeBoundedOnExit(scheduler);
        var clock = Stopwatch.StartNew();
        long steps = 0;

        async Task Churn()
        {
            while (clock.Elapsed < TimeSpan.FromMilliseconds(600))
            {
                await Task.Yield();
                Interlocked.Increment(ref steps);
            }
        }

        Task[] churners = [.. Enumerable.Range(0, 8).Select(_ => scheduler.Factory.StartNew(Churn).Unwrap())];
        await Task.WhenAll(churners).WithTimeout("the churn", Bound);
        steps.Should().BeGreaterThan(1000);
        scheduler.CompensationThreadsStarted.Should().Be(0, "workers that make progress are not starved");
    }

    // Dispose while compensation threads run the work the blocked workers wait for: Dispose waits for them, and nothing
    // runs after it returns (a compensation thread still running would let its work finish after Dispose).
    [Theory]
    [InlineData(0)]
    [InlineData(1)]
    [InlineData(2)]
    public async Task Dispose_during_compensation_waits_for_the_compensation_threads_and_nothing_runs_after_it(int seed)
    {
        var random = new Random(seed);
        WorkStealingTaskScheduler scheduler = Create();
        using var never = new CancellationTokenSource();
        int ran = 0;
        using var rendezvous = new Barrier(2);
        Task[] joiners = [.. Enumerable.Range(0, 2).Select(_ => scheduler.Factory.StartNew(() =>
        {
            rendezvous.SignalAndWait(Bound).Should().BeTrue();
            var children = new Task[4];
            for (int i = 0; i < children.Length; i++)
            {
                children[i] = Task.Factory.StartNew(
                    () =>
                    {
                        Thread.Sleep(random.Next(0, 3));
                        Interlocked.Increment(ref ran);
                    },
                    CancellationToken.None,
                    TaskCreationOptions.None,
                    scheduler);
            }

            foreach (Task child in children)
            {
                child.Wait(never.Token);
            }
        }))];

        await Task.Delay(random.Next(0, 150));
        await Task.Run(scheduler.Dispose).WithTimeout("Dispose", Bound);
        int atDispose = Volatile.Read(ref ran);
        scheduler.LiveCompensationThreads.Should().Be(0, "Dispose returns only once the compensation threads are gone");
        joiners.Should().OnlyContain(j => j.IsCompleted, "Dispose runs everything queued before it returns");
        atDispose.Should().Be(8, "every child ran");
        await Task.Delay(50);
        Volatile.Read(ref ran).Should().Be(atDispose, "nothing runs after Dispose returned");
    }

    private static async Task WaitUntil(Func<bool> condition, string what)
    {
        var clock = Stopwatch.StartNew();
        while (!condition())
        {
            clock.Elapsed.Should().BeLessThan(Bound, what);
            await Task.Delay(10);
        }
    }
}
