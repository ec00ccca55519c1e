using System.Collections.Concurrent;
using Scheduler.Sources;

namespace Scheduler.Tests.Scheduling;

/// <summary>
/// Adversarial round against the watchdog's blocked-worker rescue (WorkStealingTaskScheduler.BlockedRescue.cs) and the
/// <see cref="WorkStealingTaskSchedulerOptions.BlockingCompensationDelay"/> option (docs/scheduling.md, "Blocked workers
/// and the LIFO slot" and "Blocking compensation"): rescued work runs exactly once, oldest first, keeps its context and
/// its count, survives Dispose and a lone blocked worker, and the delay's edge values behave as documented.
/// </summary>
public sealed class AdversarialRescueTests
{
    public enum BlockKind
    {
        Monitor,
        Sleep,
        Semaphore,
        TimedWait,
    }

    private static WorkStealingTaskScheduler Create(int workers, string prefix, TimeSpan? delay = null, int capacity = 256, bool context = false) =>
        new(new WorkStealingTaskSchedulerOptions
        {
            WorkerCount = workers,
            ThreadNamePrefix = prefix,
            BlockingCompensationDelay = delay ?? Timeout.InfiniteTimeSpan,
            LocalQueueCapacity = capacity,
            UseSynchronizationContext = context,
        });

    private static Task Spawn(WorkStealingTaskScheduler scheduler, Action action) =>
        Task.Factory.StartNew(action, CancellationToken.None, TaskCreationOptions.None, scheduler);

    /// <summary>A yield loop that keeps one worker busy (it never steals), started once the other side joins the barrier.</summary>
    private static Task Churn(WorkStealingTaskScheduler scheduler, Barrier rendezvous, CancellationToken done) =>
        scheduler.Factory.StartNew(async () =>
        {
            rendezvous.SignalAndWait(SchedulerTestHelpers.Timeout).Should().BeTrue();
            while (!done.IsCancellationRequested)
            {
                await Task.Yield();
            }
        }).Unwrap();

    [Fact]
    public async Task A_child_moved_while_its_owner_wakes_and_joins_it_runs_exactly_once()
    {
        var scheduler = Create(2, "RaceOwner");
        using var disposeScheduler = SchedulerTestHelpers.DisposeBoundedOnExit(scheduler);
        using var rendezvous = new Barrier(2);
        using var done = new CancellationTokenSource();
        using var never = new CancellationTokenSource();
        Task churn = Churn(scheduler, rendezvous, done.Token);

        // 24 rounds, and more (up to 240) until one was released after the move: under a load average of 13 no round of
        // 24 was, once in 8 runs (the watchdog's looks came late, or an idle peer took the children before any move).
        const int Rounds = 24;
        const int MaxRounds = 240;
        const int Children = 6;
        const int Posted = 3;
        int[] childRuns = new int[MaxRounds * Children];
        int[] postedRuns = new int[MaxRounds * Posted];
        bool first = true;
        int rounds = 0;
        for (int round = 0; round < Rounds || (round < MaxRounds && scheduler.BlockedQueueRescues == 0); round++)
        {
            rounds = round + 1;
            using var release = new ManualResetEventSlim();
            int r = round;
            bool join = first;
            first = false;
            Task owner = scheduler.Factory.StartNew(() =>
            {
                if (join)
                {
                    rendezvous.SignalAndWait(SchedulerTestHelpers.Timeout).Should().BeTrue();
                }

                Task[] children = [.. Enumerable.Range(0, Children).Select(i => Spawn(scheduler, () => Interlocked.Increment(ref childRuns[(r * Children) + i])))];
                scheduler.TryGetCurrentWorkerIndex(out int self).Should().BeTrue();
                for (int i = 0; i < Posted; i++)
                {
                    int p = (r * Posted) + i;
                    scheduler.EnqueueToWorker(self, new SchedulerTestHelpers.RecordingWorkItem(() => Interlocked.Increment(ref postedRuns[p])));
                }

                release.Wait(never.Token); // blocked: WaitSleepJoin

                // Woken around the move: joins its children newest first (inlined if still in its deque, else a peer's).
                for (int i = Children - 1; i >= 0; i--)
                {
                    children[i].Wait();
                }
            });

            // Release around the watchdog's second look (10–30 ms), at a different point of the rescue each round.
            long before = scheduler.BlockedQueueRescues;
            var clock = System.Diagnostics.Stopwatch.StartNew();
            double releaseAt = 15 + ((round % 12) * 4.0);
            while (clock.Elapsed.TotalMilliseconds < releaseAt && scheduler.BlockedQueueRescues == before)
            {
                Thread.SpinWait(50);
            }

            release.Set();
            await owner.WithTimeout($"round {round}'s owner", TimeSpan.FromSeconds(10));
        }

        await SchedulerTestHelpers.WaitUntilAsync(() => postedRuns.Take(rounds * Posted).All(n => n >= 1));
        done.Cancel();
        await churn.WithTimeout("the yield loop");
        await SchedulerTestHelpers.WaitUntilAsync(() => scheduler.GetStatistics().QueuedTasks == 0);
        scheduler.GetStatistics().QueuedTasks.Should().Be(0, "the stale entries of children inlined after their move are dropped");
        childRuns.Take(rounds * Children).Should().OnlyContain(n => n == 1, "a child moved to the global queue while its owner joined it runs once");
        postedRuns.Take(rounds * Posted).Should().OnlyContain(n => n == 1, "an inbox item moved to the global queue runs once");
        childRuns.Skip(rounds * Children).Should().OnlyContain(n => n == 0, "no round after the last ran");
        scheduler.BlockedQueueRescues.Should().BeGreaterThan(0, "some rounds were released after the move");
    }

    [Theory]
    [InlineData(BlockKind.Monitor)]
    [InlineData(BlockKind.Sleep)]
    [InlineData(BlockKind.Semaphore)]
    [InlineData(BlockKind.TimedWait)]
    public async Task Children_of_a_worker_blocked_on_a_lock_a_sleep_a_semaphore_or_a_timed_wait_reach_a_busy_peer(BlockKind kind)
    {
        var scheduler = Create(2, "Block" + kind);
        using var disposeScheduler = SchedulerTestHelpers.DisposeBoundedOnExit(scheduler);
        using var rendezvous = new Barrier(2);
        using var done = new CancellationTokenSource();
        using var semaphore = new SemaphoreSlim(0);
        object gate = new();
        var childrenReady = new TaskCompletionSource<Task[]>(TaskCreationOptions.RunContinuationsAsynchronously);
        var locked = new ManualResetEventSlim();
        var unlock = new ManualResetEventSlim();
        Task churn = Churn(scheduler, rendezvous, done.Token);

        // The lock is held by a plain thread until the children have run: only the rescue lets them run.
        var holder = new Thread(() =>
        {
            lock (gate)
            {
                locked.Set();
                unlock.Wait(SchedulerTestHelpers.Timeout);
            }
        }) { IsBackground = true };
        if (kind == BlockKind.Monitor)
        {
            holder.Start();
            locked.Wait(SchedulerTestHelpers.Timeout).Should().BeTrue();
        }

        Task blocked = scheduler.Factory.StartNew(() =>
        {
            rendezvous.SignalAndWait(SchedulerTestHelpers.Timeout).Should().BeTrue();
            Task[] children = [.. Enumerable.Range(0, 4).Select(_ => Spawn(scheduler, () => semaphore.Release()))];
            childrenReady.SetResult(children);
            switch (kind)
            {
                case BlockKind.Monitor:
                    lock (gate)
                    {
                    }

                    break;
                case BlockKind.Sleep:
                    while (!children.All(c => c.IsCompleted))
                    {
                        Thread.Sleep(1);
                    }

                    break;
                case BlockKind.Semaphore:
                    for (int i = 0; i < children.Length; i++)
                    {
                        semaphore.Wait(SchedulerTestHelpers.Timeout).Should().BeTrue();
                    }

                    break;
                case BlockKind.TimedWait:
                    Task.WaitAll(children, SchedulerTestHelpers.Timeout).Should().BeTrue();
                    break;
            }
        });

        try
        {
            Task[] children = await childrenReady.Task.WithTimeout("the children");
            await Task.WhenAll(children).WithTimeout("the blocked worker's children", TimeSpan.FromSeconds(10));
        }
        finally
        {
            unlock.Set();
        }

        await blocked.WithTimeout("the blocked worker");
        done.Cancel();
        await churn.WithTimeout("the yield loop");
        scheduler.BlockedQueueRescues.Should().BeGreaterThan(0);
        if (kind == BlockKind.Monitor)
        {
            holder.Join(SchedulerTestHelpers.Timeout).Should().BeTrue();
        }

        locked.Dispose();
        unlock.Dispose();
    }

    /// <summary>One worker, compensation off: it spawns <paramref name="count"/> recording children, then blocks until released.</summary>
    private static (Task Owner, ConcurrentQueue<int> Order) SpawnThenBlock(WorkStealingTaskScheduler scheduler, int count, ManualResetEventSlim release, Task[] children) =>
        SpawnThenBlockCore(scheduler, count, release, children, new ConcurrentQueue<int>());

    private static (Task Owner, ConcurrentQueue<int> Order) SpawnThenBlockCore(WorkStealingTaskScheduler scheduler, int count, ManualResetEventSlim release, Task[] children, ConcurrentQueue<int> order)
    {
        Task owner = scheduler.Factory.StartNew(() =>
        {
            for (int i = 0; i < count; i++)
            {
                int n = i;
                children[i] = Spawn(scheduler, () => order.Enqueue(n));
            }

            release.Wait(SchedulerTestHelpers.Timeout).Should().BeTrue();
        });
        return (owner, order);
    }

    [Fact]
    public async Task A_lone_blocked_worker_keeps_its_rescued_children_and_runs_them_oldest_first_once_released()
    {
        var scheduler = Create(1, "LoneOrder");
        using var disposeScheduler = SchedulerTestHelpers.DisposeBoundedOnExit(scheduler);
        using var release = new ManualResetEventSlim();
        const int Count = 10;
        var children = new Task[Count];
        (Task owner, ConcurrentQueue<int> order) = SpawnThenBlock(scheduler, Count, release, children);

        // The newest child sits in the LIFO slot (its own rescue); the other nine in the deque, moved oldest first.
        await SchedulerTestHelpers.WaitUntilAsync(() => scheduler.BlockedQueueRescues >= Count - 1);
        scheduler.BlockedQueueRescues.Should().BeGreaterThanOrEqualTo(Count - 1);
        order.Should().BeEmpty("nobody is there to run rescued work while the only worker is blocked");

        release.Set();
        await owner.WithTimeout("the owner");
        await Task.WhenAll(children).WithTimeout("the rescued children", TimeSpan.FromSeconds(10));
        int[] ran = [.. order];
        ran.Should().HaveCount(Count).And.OnlyHaveUniqueItems();
        ran.Where(n => n < Count - 1).Should().BeInAscendingOrder("the deque's items were moved to the FIFO global queue oldest first");
        scheduler.CompensationThreadsStarted.Should().Be(0);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task A_lone_worker_released_after_the_move_still_joins_its_moved_children_with_Wait_or_Result(bool result)
    {
        var scheduler = Create(1, "LoneJoin");
        using var disposeScheduler = SchedulerTestHelpers.DisposeBoundedOnExit(scheduler);
        using var release = new ManualResetEventSlim();
        const int Count = 6;
        var runs = new int[Count];
        Task owner = scheduler.Factory.StartNew(() =>
        {
            Task<int>[] children = [.. Enumerable.Range(0, Count).Select(i => Task.Factory.StartNew(
                () => Interlocked.Increment(ref runs[i]), CancellationToken.None, TaskCreationOptions.None, scheduler))];
            release.Wait(SchedulerTestHelpers.Timeout).Should().BeTrue();

            // Nobody else can run them (one worker, no compensation): an untimed join must inline them from the global queue.
            foreach (Task<int> child in children)
            {
                if (result)
                {
                    child.Result.Should().Be(1);
                }
                else
                {
                    child.Wait();
                }
            }
        });

        await SchedulerTestHelpers.WaitUntilAsync(() => scheduler.BlockedQueueRescues >= Count - 1 && scheduler.LifoRescues >= 1);
        scheduler.BlockedQueueRescues.Should().BeGreaterThanOrEqualTo(Count - 1);
        release.Set();
        await owner.WithTimeout("the owner's joins of its moved children", TimeSpan.FromSeconds(10));
        runs.Should().OnlyContain(n => n == 1);
        await SchedulerTestHelpers.WaitUntilAsync(() => scheduler.GetStatistics().QueuedTasks == 0);
        scheduler.GetStatistics().QueuedTasks.Should().Be(0, "the global queue's stale entries are skipped and uncounted");
        scheduler.GetStatistics().TasksInlined.Should().BeGreaterThanOrEqualTo(Count);
    }

    [Theory]
    [InlineData(0)]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(3)]
    public async Task Dispose_while_every_worker_waits_with_a_timeout_on_rescued_children_completes_them_all_first(int seed)
    {
        var scheduler = Create(2, "DisposeComp", TimeSpan.FromMilliseconds(20));
        const int Count = 5;
        int disposed = 0;
        int afterDispose = 0;
        int ran = 0;
        using var bothIn = new CountdownEvent(2);
        Task[] owners = [.. Enumerable.Range(0, 2).Select(_ => scheduler.Factory.StartNew(() =>
        {
            bothIn.Signal();
            bothIn.Wait(SchedulerTestHelpers.Timeout).Should().BeTrue();
            Task[] children = [.. Enumerable.Range(0, Count).Select(_ => Spawn(scheduler, () =>
            {
                Interlocked.Increment(ref ran);
                if (Volatile.Read(ref disposed) != 0)
                {
                    Interlocked.Increment(ref afterDispose);
                }
            }))];
            Task.WaitAll(children, SchedulerTestHelpers.Timeout).Should().BeTrue(); // timed: never inlined
        }))];

        await Task.Delay(seed * 15);
        Task disposal = Task.Run(async () =>
        {
            await scheduler.DisposeAsync();
            Volatile.Write(ref disposed, 1);
        });
        await disposal.WithTimeout("DisposeAsync", TimeSpan.FromSeconds(10));
        owners.Should().OnlyContain(o => o.Status == TaskStatus.RanToCompletion);
        ran.Should().Be(2 * Count);
        afterDispose.Should().Be(0);
    }

    [Fact]
    public async Task QueuedTasks_and_GetScheduledTasks_still_count_a_blocked_workers_rescued_children()
    {
        var scheduler = Create(1, "LoneCount");
        using var disposeScheduler = SchedulerTestHelpers.DisposeBoundedOnExit(scheduler);
        using var release = new ManualResetEventSlim();
        const int Count = 8;
        var children = new Task[Count];
        (Task owner, _) = SpawnThenBlock(scheduler, Count, release, children);
        try
        {
            await SchedulerTestHelpers.WaitUntilAsync(() => scheduler.BlockedQueueRescues >= Count - 1 && scheduler.LifoRescues >= 1);
            scheduler.BlockedQueueRescues.Should().BeGreaterThanOrEqualTo(Count - 1);

            // Sample repeatedly: the watchdog keeps ticking meanwhile.
            for (int i = 0; i < 20; i++)
            {
                scheduler.GetStatistics().QueuedTasks.Should().Be(Count, "every child is queued once, wherever the rescue put it");
                var scheduled = SchedulerTestHelpers.ScheduledTasks(scheduler);
                scheduled.Should().Contain(children, "a rescued task is still scheduled on this scheduler");
                scheduled.Should().OnlyHaveUniqueItems();
                await Task.Delay(2);
            }
        }
        finally
        {
            release.Set();
        }

        await owner.WithTimeout("the owner");
        await Task.WhenAll(children).WithTimeout("the rescued children");
        await SchedulerTestHelpers.WaitUntilAsync(() => scheduler.GetStatistics().QueuedTasks == 0);
        scheduler.GetStatistics().QueuedTasks.Should().Be(0);
    }

    [Theory]
    [InlineData(0)]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(3)]
    [InlineData(4)]
    [InlineData(5)]
    public async Task Dispose_racing_a_rescue_runs_every_child_once_and_nothing_after_it_returns(int seed)
    {
        var scheduler = Create(1, "DisposeRace");
        using var release = new ManualResetEventSlim();
        const int Count = 12;
        var children = new Task[Count];
        int afterDispose = 0;
        int disposed = 0;
        var runs = new int[Count];
        Task owner = scheduler.Factory.StartNew(() =>
        {
            for (int i = 0; i < Count; i++)
            {
                int n = i;
                children[i] = Spawn(scheduler, () =>
                {
                    Interlocked.Increment(ref runs[n]);
                    if (Volatile.Read(ref disposed) != 0)
                    {
                        Interlocked.Increment(ref afterDispose);
                    }
                });
            }

            release.Wait(SchedulerTestHelpers.Timeout).Should().BeTrue();
        });

        // Dispose starts at a different point of the rescue each seed (before, during, after the two looks).
        await Task.Delay(seed * 5);
        Task disposal = Task.Run(() =>
        {
            if (seed % 2 == 0)
            {
                scheduler.Dispose();
            }
            else
            {
                scheduler.DisposeAsync().AsTask().GetAwaiter().GetResult();
            }

            Volatile.Write(ref disposed, 1);
        });
        await Task.Delay(seed * 4);
        release.Set();
        await disposal.WithTimeout("Dispose", TimeSpan.FromSeconds(10));
        owner.IsCompleted.Should().BeTrue();
        runs.Should().OnlyContain(n => n == 1, "Dispose runs everything already queued, rescued or not, once");
        children.Should().OnlyContain(c => c.Status == TaskStatus.RanToCompletion);
        afterDispose.Should().Be(0);
    }

    [Fact]
    public async Task A_waker_continuation_in_a_blocked_workers_inbox_runs_once_with_its_execution_context()
    {
        var scheduler = Create(2, "InboxWaker");
        using var disposeScheduler = SchedulerTestHelpers.DisposeBoundedOnExit(scheduler);
        using var rendezvous = new Barrier(2);
        using var done = new CancellationTokenSource();
        using var never = new CancellationTokenSource();
        var flowed = new AsyncLocal<string>();
        Task churn = Churn(scheduler, rendezvous, done.Token);
        const int Count = 4;
        int runs = 0;
        var seen = new ConcurrentBag<string?>();
        var onWorker = new ConcurrentBag<bool>();

        Task blocked = scheduler.Factory.StartNew(() =>
        {
            rendezvous.SignalAndWait(SchedulerTestHelpers.Timeout).Should().BeTrue();
            using var all = new CountdownEvent(Count);
            var sources = new PooledValueTaskSource[Count];
            for (int i = 0; i < Count; i++)
            {
                sources[i] = PooledValueTaskSource.Rent();
                flowed.Value = "awaiter " + i;
                _ = AwaitIt(sources[i].Task);
            }

            flowed.Value = "blocked";

            // Completed from another thread: each continuation goes to this worker's inbox.
            Task.Run(() =>
            {
                foreach (PooledValueTaskSource source in sources)
                {
                    source.TrySetResult().Should().BeTrue();
                }
            });
            all.Wait(never.Token); // only the rescue can move them to a peer

            async Task AwaitIt(ValueTask pending)
            {
                string? expected = flowed.Value;
                await pending;
                Interlocked.Increment(ref runs);
                seen.Add(flowed.Value == expected ? "ok" : flowed.Value);
                onWorker.Add(scheduler.IsWorkerThread || scheduler.IsCompensationThread);
                all.Signal();
            }
        });

        await blocked.WithTimeout("the blocked worker", TimeSpan.FromSeconds(10));
        done.Cancel();
        await churn.WithTimeout("the yield loop");
        await Task.Delay(20);
        runs.Should().Be(Count);
        seen.Should().OnlyContain(s => s == "ok", "a continuation runs in the ExecutionContext of its await");
        onWorker.Should().OnlyContain(b => b, "a rescued continuation still runs on the scheduler");
    }

    [Fact]
    public async Task Every_worker_blocked_with_compensation_off_starts_no_thread_and_releasing_them_completes_everything()
    {
        var scheduler = Create(2, "AllBlocked");
        using var disposeScheduler = SchedulerTestHelpers.DisposeBoundedOnExit(scheduler);
        using var release = new ManualResetEventSlim();
        using var bothIn = new CountdownEvent(2);
        var children = new ConcurrentBag<Task>();
        Task[] owners = [.. Enumerable.Range(0, 2).Select(_ => scheduler.Factory.StartNew(() =>
        {
            bothIn.Signal();
            bothIn.Wait(SchedulerTestHelpers.Timeout).Should().BeTrue(); // both workers are in here: nobody steals
            for (int i = 0; i < 5; i++)
            {
                children.Add(Spawn(scheduler, () => { }));
            }

            release.Wait(SchedulerTestHelpers.Timeout).Should().BeTrue();
        }))];

        try
        {
            await SchedulerTestHelpers.WaitUntilAsync(() => scheduler.BlockedQueueRescues >= 8);
            await Task.Delay(250); // two and a half default delays of total standstill
            scheduler.CompensationThreadsStarted.Should().Be(0, "compensation is off: the documented hang");
            children.Should().HaveCount(10).And.OnlyContain(c => !c.IsCompleted, "every worker is blocked and nothing compensates");
        }
        finally
        {
            release.Set();
        }

        await Task.WhenAll(owners).WithTimeout("the owners");
        await Task.WhenAll(children).WithTimeout("the rescued children once released", TimeSpan.FromSeconds(10));
        scheduler.CompensationThreadsStarted.Should().Be(0);
    }

    public static TheoryData<long, bool> Delays => new()
    {
        { 1, true },                                      // one tick
        { TimeSpan.TicksPerMillisecond, true },            // one millisecond
        { int.MaxValue * TimeSpan.TicksPerMillisecond, false }, // the largest accepted: effectively never
        { -1 * TimeSpan.TicksPerMillisecond, false },      // Timeout.InfiniteTimeSpan: off
    };

    [Theory]
    [MemberData(nameof(Delays))]
    public async Task BlockingCompensationDelay_edge_values_compensate_soon_or_never(long ticks, bool compensates)
    {
        var scheduler = Create(1, "Delay" + ticks, TimeSpan.FromTicks(ticks));
        using var disposeScheduler = SchedulerTestHelpers.DisposeBoundedOnExit(scheduler);
        using var never = new CancellationTokenSource();
        Task<bool> joined = scheduler.Factory.StartNew(() =>
        {
            Task child = Spawn(scheduler, () => { });
            try
            {
                child.Wait(never.Token); // not inlined: only a compensation thread runs the child
                return true;
            }
            catch (OperationCanceledException)
            {
                return false;
            }
        });

        if (compensates)
        {
            (await joined.WithTimeout("the join", TimeSpan.FromSeconds(10))).Should().BeTrue();
            scheduler.CompensationThreadsStarted.Should().BeGreaterThan(0);
        }
        else
        {
            await Task.Delay(300);
            joined.IsCompleted.Should().BeFalse("without compensation the lone blocked worker waits");
            scheduler.CompensationThreadsStarted.Should().Be(0);
            never.Cancel();
            await joined.WithTimeout("the cancelled join");
        }
    }

    [Fact]
    public async Task A_blocked_worker_with_an_overflowing_deque_loses_no_child()
    {
        var scheduler = Create(2, "Overflow", capacity: 16);
        using var disposeScheduler = SchedulerTestHelpers.DisposeBoundedOnExit(scheduler);
        using var rendezvous = new Barrier(2);
        using var done = new CancellationTokenSource();
        using var never = new CancellationTokenSource();
        Task churn = Churn(scheduler, rendezvous, done.Token);
        const int Count = 200;
        var runs = new int[Count];
        Task blocked = scheduler.Factory.StartNew(() =>
        {
            rendezvous.SignalAndWait(SchedulerTestHelpers.Timeout).Should().BeTrue();
            Task[] children = [.. Enumerable.Range(0, Count).Select(i => Spawn(scheduler, () => Interlocked.Increment(ref runs[i])))];
            Task.WaitAll(children, never.Token); // not inlined
        });

        await blocked.WithTimeout("the blocked worker", TimeSpan.FromSeconds(10));
        done.Cancel();
        await churn.WithTimeout("the yield loop");
        runs.Should().OnlyContain(n => n == 1);
    }

    [Fact]
    public async Task In_context_mode_rescued_children_run_under_the_schedulers_context()
    {
        var scheduler = Create(2, "Context", context: true);
        using var disposeScheduler = SchedulerTestHelpers.DisposeBoundedOnExit(scheduler);
        using var rendezvous = new Barrier(2);
        using var done = new CancellationTokenSource();
        using var never = new CancellationTokenSource();
        Task churn = Churn(scheduler, rendezvous, done.Token);
        var contexts = new ConcurrentBag<bool>();
        Task blocked = scheduler.Factory.StartNew(() =>
        {
            rendezvous.SignalAndWait(SchedulerTestHelpers.Timeout).Should().BeTrue();
            SynchronizationContext? mine = SynchronizationContext.Current;
            mine.Should().NotBeNull();
            Task[] children = [.. Enumerable.Range(0, 4).Select(_ => Spawn(scheduler, () =>
                contexts.Add(ReferenceEquals(SynchronizationContext.Current, mine) && ReferenceEquals(TaskScheduler.Current, scheduler))))];
            Task.WaitAll(children, never.Token);
        });

        await blocked.WithTimeout("the blocked worker", TimeSpan.FromSeconds(10));
        done.Cancel();
        await churn.WithTimeout("the yield loop");
        contexts.Should().HaveCount(4).And.OnlyContain(b => b, "a rescued child runs on a worker, under the scheduler's context");
        scheduler.BlockedQueueRescues.Should().BeGreaterThan(0);
    }

    [Fact]
    public async Task Items_posted_one_by_one_to_a_blocked_workers_inbox_keep_reaching_a_busy_peer()
    {
        var scheduler = Create(2, "InboxStream");
        using var disposeScheduler = SchedulerTestHelpers.DisposeBoundedOnExit(scheduler);
        using var rendezvous = new Barrier(2);
        using var done = new CancellationTokenSource();
        using var never = new CancellationTokenSource();
        Task churn = Churn(scheduler, rendezvous, done.Token);
        const int Count = 30;
        var runs = new int[Count];
        Task blocked = scheduler.Factory.StartNew(() =>
        {
            rendezvous.SignalAndWait(SchedulerTestHelpers.Timeout).Should().BeTrue();
            scheduler.TryGetCurrentWorkerIndex(out int self).Should().BeTrue();
            using var last = new ManualResetEventSlim();

            // Each item is posted only once the one before it ran: the rescue must go on for as long as the worker blocks.
            void Post(int n) => scheduler.EnqueueToWorker(self, new SchedulerTestHelpers.RecordingWorkItem(() =>
            {
                Interlocked.Increment(ref runs[n]);
                if (n + 1 < Count)
                {
                    Task.Run(() => Post(n + 1));
                }
                else
                {
                    last.Set();
                }
            }));

            Task.Run(() => Post(0));
            last.Wait(never.Token);
        });

        await blocked.WithTimeout("the stream through a blocked worker's inbox", TimeSpan.FromSeconds(10));
        done.Cancel();
        await churn.WithTimeout("the yield loop");
        runs.Should().OnlyContain(n => n == 1);
    }

    [Fact]
    public async Task Posts_of_a_blocked_worker_in_context_mode_reach_a_peer_oldest_first()
    {
        var scheduler = Create(2, "PostOrder", context: true);
        using var disposeScheduler = SchedulerTestHelpers.DisposeBoundedOnExit(scheduler);
        using var rendezvous = new Barrier(2);
        using var done = new CancellationTokenSource();
        using var never = new CancellationTokenSource();
        Task churn = Churn(scheduler, rendezvous, done.Token);
        const int Count = 20;
        var order = new ConcurrentQueue<int>();
        var flowed = new AsyncLocal<string>();
        var seen = new ConcurrentBag<string?>();
        Task blocked = scheduler.Factory.StartNew(() =>
        {
            rendezvous.SignalAndWait(SchedulerTestHelpers.Timeout).Should().BeTrue();
            SynchronizationContext context = SynchronizationContext.Current!;
            using var all = new CountdownEvent(Count);
            flowed.Value = "poster";
            for (int i = 0; i < Count; i++)
            {
                int n = i;
                context.Post(_ =>
                {
                    order.Enqueue(n);
                    seen.Add(flowed.Value);
                    all.Signal();
                }, null);
            }

            all.Wait(never.Token); // only a peer can run them, after the rescue
        });

        await blocked.WithTimeout("the blocked worker's posts", TimeSpan.FromSeconds(10));
        done.Cancel();
        await churn.WithTimeout("the yield loop");
        seen.Should().OnlyContain(v => v == "poster", "a post runs in the poster's ExecutionContext, wherever the rescue sent it");

        // Nothing of the posts' context stays on the workers that ran them.
        var leaked = new ConcurrentBag<string?>();
        using var probed = new CountdownEvent(2 * 10);
        for (int i = 0; i < 10; i++)
        {
            for (int w = 0; w < 2; w++)
            {
                scheduler.EnqueueToWorker(w, new SchedulerTestHelpers.RecordingWorkItem(() =>
                {
                    leaked.Add(flowed.Value);
                    probed.Signal();
                }));
            }
        }

        probed.Wait(SchedulerTestHelpers.Timeout).Should().BeTrue();
        leaked.Should().OnlyContain(v => v == null);
        int[] ran = [.. order];
        ran.Should().HaveCount(Count).And.OnlyHaveUniqueItems();

        // A post that is not a yield goes where a resumed task goes (docs/scheduling.md): the newest to the LIFO slot,
        // rescued on its own; the rest are in the deque, which the rescue moves oldest first.
        ran.Where(n => n < Count - 1).Should().BeInAscendingOrder("the rescue moves a deque's items oldest first");
    }

    [Fact]
    public async Task Plain_items_in_a_lone_workers_deque_run_exactly_once_when_it_wakes_during_the_move()
    {
        var scheduler = Create(1, "PopRace");
        using var disposeScheduler = SchedulerTestHelpers.DisposeBoundedOnExit(scheduler);
        // 40 rounds, and more (up to 400) until one was released after the move: in a loaded run no round of 40 was (the
        // watchdog's looks came after every release), and the last assertion failed for want of a move, not of an item.
        const int Rounds = 40;
        const int MaxRounds = 400;
        const int Items = 8;
        var runs = new int[MaxRounds * Items];
        int rounds = 0;
        for (int round = 0; round < Rounds || (round < MaxRounds && scheduler.BlockedQueueRescues == 0); round++)
        {
            rounds = round + 1;
            using var release = new ManualResetEventSlim();
            int r = round;
            long before = scheduler.BlockedQueueRescues;
            Task owner = scheduler.Factory.StartNew(() =>
            {
                scheduler.TryGetCurrentWorkerIndex(out int self).Should().BeTrue();
                for (int i = 0; i < Items; i++)
                {
                    int n = (r * Items) + i;
                    scheduler.EnqueueToWorker(self, new SchedulerTestHelpers.RecordingWorkItem(() => Interlocked.Increment(ref runs[n]))); // its own deque
                }

                release.Wait(SchedulerTestHelpers.Timeout).Should().BeTrue();
            });

            // Released at a different point around the move each round; the owner then pops what the watchdog steals.
            var clock = System.Diagnostics.Stopwatch.StartNew();
            double releaseAt = 10 + ((round % 20) * 2.0);
            while (clock.Elapsed.TotalMilliseconds < releaseAt && scheduler.BlockedQueueRescues == before)
            {
                Thread.SpinWait(20);
            }

            release.Set();
            await owner.WithTimeout($"round {round}'s owner");
            await SchedulerTestHelpers.WaitUntilAsync(() => runs.Skip(r * Items).Take(Items).All(n => n >= 1));
            runs.Skip(r * Items).Take(Items).Should().OnlyContain(n => n >= 1, $"round {round}'s items must all run");
        }

        await SchedulerTestHelpers.WaitUntilAsync(() => scheduler.GetStatistics().QueuedTasks == 0);
        runs.Take(rounds * Items).Should().OnlyContain(n => n == 1, "an item the owner pops and the watchdog steals at once runs once");
        runs.Skip(rounds * Items).Should().OnlyContain(n => n == 0, "no round after the last ran");
        scheduler.BlockedQueueRescues.Should().BeGreaterThan(0, "some rounds were released after the move");
    }

    /// <summary>
    /// The XML docs of <see cref="WorkStealingTaskSchedulerOptions.BlockingCompensationDelay"/>: "With n compensation
    /// threads running, the next one needs (n + 1) delays of standstill. [...] the check runs every 10 ms, so a shorter
    /// delay acts as 10–20 ms." A sub-tick delay acting as at least one 10 ms tick, the ramp gives at most
    /// k threads in 5·k·(k + 1) ms: about 9 in half a second, not one per tick up to the cap.
    /// </summary>
    [Theory]
    [InlineData(1L)]
    [InlineData(TimeSpan.TicksPerMillisecond)]
    [InlineData(10 * TimeSpan.TicksPerMillisecond)] // control: a delay of one tick ramps as documented
    public async Task A_sub_tick_BlockingCompensationDelay_still_adds_threads_ever_more_slowly(long ticks)
    {
        var scheduler = Create(2, "Ramp" + ticks, TimeSpan.FromTicks(ticks));
        using var disposeScheduler = SchedulerTestHelpers.DisposeBoundedOnExit(scheduler);
        using var stop = new ManualResetEventSlim();
        using var bothIn = new CountdownEvent(2);
        var items = new List<Task>();
        try
        {
            // Both workers block, with 100 more blocking items queued behind them: every compensation thread blocks too,
            // a standstill that looks like long computations everywhere (no CPU used).
            Task[] owners = [.. Enumerable.Range(0, 2).Select(_ => scheduler.Factory.StartNew(() =>
            {
                bothIn.Signal();
                bothIn.Wait(SchedulerTestHelpers.Timeout).Should().BeTrue();
                stop.Wait(SchedulerTestHelpers.Timeout);
            }))];
            bothIn.Wait(SchedulerTestHelpers.Timeout).Should().BeTrue();

            // The standstill counts from here (no work was queued before), so this clock's reading after the count can
            // only widen the bound below. The test thread can resume seconds after its 500-ms delay on a loaded machine,
            // and the ramp goes on meanwhile: a fixed 15 would then fail on a scheduler that ramps as documented.
            var clock = System.Diagnostics.Stopwatch.StartNew();
            for (int i = 0; i < 100; i++)
            {
                items.Add(Spawn(scheduler, () => stop.Wait(SchedulerTestHelpers.Timeout)));
            }

            items.AddRange(owners);
            await SchedulerTestHelpers.WaitUntilAsync(() => scheduler.CompensationThreadsStarted > 0);
            await Task.Delay(500);
            long started = scheduler.CompensationThreadsStarted;
            double elapsedMs = clock.Elapsed.TotalMilliseconds;

            // k threads need 10 × (1 + 2 + … + k) ms of standstill at least: k (k + 1) / 2 ≤ elapsed / 10 ms; plus the 6 of
            // slack that the bound of 15 had over the 9 of half a second.
            int most = (int)Math.Floor((Math.Sqrt(1 + (8 * elapsedMs / 10)) - 1) / 2) + 6;
            started.Should().BeGreaterThan(0, "every worker stands still with work queued");
            started.Should().BeLessThanOrEqualTo(most, $"each further thread needs (n + 1) delays, a delay acting as at least 10 ms ({elapsedMs:F0} ms)");
        }
        finally
        {
            stop.Set();
        }

        await Task.WhenAll(items).WithTimeout("the blocked items once released");
    }
}
