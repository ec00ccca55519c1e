using System.Collections.Concurrent;
using System.Threading.Tasks.Dataflow;

namespace Scheduler.Tests.Scheduling;

/// <summary>
/// Adversarial scenarios for blocking and inlining (docs/scheduling.md, "Inlining and blocking waits"; API.md: "Task.Wait() /
/// .Result on a worker inlines the awaited task when it is still queued, so fork-join with blocking waits cannot deadlock a
/// small scheduler"): every wait shape users write on workers — untimed, timed, cancellable, over a promise, over a parent
/// with attached children, through Parallel, Dataflow and a SemaphoreSlim — with every worker blocked at once, waits that
/// inline from another worker's queues or from the middle of the own deque, and fork-join after Dispose. Workers are
/// background threads and every wait is bounded: a deadlock fails its test (after a short bound, since the work that
/// would unblock it is a no-op) and never hangs the run; a deadlocked scheduler is not waited for at teardown.
/// </summary>
public sealed class AdversarialBlockingTests
{
    private static readonly TimeSpan Bound = TimeSpan.FromSeconds(10);

    // How long a scenario whose unblocking work is a no-op may take before it counts as deadlocked. The watchdog moves a
    // blocked worker's LIFO task within 10–20 ms and starts a compensation thread after 100 ms, but a loaded machine holds
    // a thread off its core for seconds (a CI run measured 3.45 s for a rescue that takes milliseconds), so three seconds
    // were no bound; a deadlock stays a deadlock for fifteen, which the test waits only when it fails.
    private static readonly TimeSpan DeadlockBound = TimeSpan.FromSeconds(15);

    private static WorkStealingTaskScheduler Create(int workers, bool context = false) =>
        new(new WorkStealingTaskSchedulerOptions
        {
            WorkerCount = workers,
            SpinIterations = 30,
            UseBackgroundThreads = true,
            UseSynchronizationContext = context,
            ThreadNamePrefix = "Block",
        });

    public enum InliningWait
    {
        Result,
        Wait,
        WaitAll,
        GetAwaiterGetResult,
    }

    // ---------------------------------------------------------------------------------------------------------------
    // What the docs promise and the scheduler keeps.
    // ---------------------------------------------------------------------------------------------------------------

    [Theory]
    [InlineData(InliningWait.Result, false)]
    [InlineData(InliningWait.Wait, false)]
    [InlineData(InliningWait.WaitAll, false)]
    [InlineData(InliningWait.GetAwaiterGetResult, false)]
    [InlineData(InliningWait.Result, true)]
    [InlineData(InliningWait.Wait, true)]
    [InlineData(InliningWait.WaitAll, true)]
    [InlineData(InliningWait.GetAwaiterGetResult, true)]
    public async Task Every_untimed_wait_shape_inlines_blocking_fork_join_on_one_worker_running_each_node_once(InliningWait wait, bool context)
    {
        // "fib(25) with .Result completes on one worker": the same for the other untimed waits the BCL inlines through
        // TryExecuteTaskInline (Wait(), WaitAll without timeout or token, GetAwaiter().GetResult()), joined in the order
        // that leaves the first-forked child behind the second (so the inlined task is not the newest of the deque), and
        // in the synchronization-context mode.
        var scheduler = Create(1, context);
        Task<int>? root = null;
        try
        {
            int calls = 0;
            int Fib(int n)
            {
                Interlocked.Increment(ref calls);
                if (n < 2)
                {
                    return n;
                }

                Task<int> a = Task.Factory.StartNew(() => Fib(n - 1), CancellationToken.None, TaskCreationOptions.None, scheduler);
                Task<int> b = Task.Factory.StartNew(() => Fib(n - 2), CancellationToken.None, TaskCreationOptions.None, scheduler);
                switch (wait)
                {
                    case InliningWait.Result:
                        return a.Result + b.Result;
                    case InliningWait.Wait:
                        a.Wait();
                        b.Wait();
                        return a.Result + b.Result;
                    case InliningWait.WaitAll:
                        Task.WaitAll(a, b);
                        return a.Result + b.Result;
                    default:
                        return a.GetAwaiter().GetResult() + b.GetAwaiter().GetResult();
                }
            }

            root = scheduler.Factory.StartNew(() => Fib(14));
            (await root.WithTimeout($"fib(14) joined with {wait} on one worker", Bound)).Should().Be(377);
            calls.Should().Be(1_219, "every node of the tree runs exactly once");
            scheduler.GetStatistics().TasksInlined.Should().BeGreaterThan(0);
        }
        finally
        {
            await Teardown(scheduler, root);
        }
    }

    [Fact]
    public async Task Both_workers_blocked_joining_their_own_children_oldest_first_run_each_child_exactly_once()
    {
        // Each worker forks 40 children (39 in its deque, the newest in its LIFO slot) and joins them oldest first: the
        // waited task is never the deque's newest, so TryExecuteTaskInline runs it with its stale entry left in the ring
        // (docs: "when another queue holds it, running it inline is still safe"). Both workers block at once, so only
        // inlining can finish; the stale entries must later be skipped, never run, and must not stay queued.
        var scheduler = Create(2);
        Task? all = null;
        try
        {
            for (int round = 0; round < 30; round++)
            {
                using var rendezvous = new Barrier(2);
                int[] runs = new int[80];
                all = Task.WhenAll(Enumerable.Range(0, 2).Select(w => scheduler.Factory.StartNew(() =>
                {
                    rendezvous.SignalAndWait(Bound).Should().BeTrue("both workers take one forker each");
                    Task[] children = [.. Enumerable.Range(0, 40).Select(i => Task.Factory.StartNew(
                        () => Interlocked.Increment(ref runs[(w * 40) + i]), CancellationToken.None, TaskCreationOptions.None, scheduler))];
                    foreach (Task child in children)
                    {
                        child.Wait();
                    }
                })));
                await all.WithTimeout($"round {round}", Bound);
                runs.Should().OnlyContain(r => r == 1, $"round {round}: every child runs exactly once");
            }

            await SchedulerTestHelpers.WaitUntilAsync(() => scheduler.GetStatistics().QueuedTasks == 0);
            scheduler.GetStatistics().QueuedTasks.Should().Be(0, "the stale entries of inlined children are dropped once the workers are idle");
            SchedulerTestHelpers.ScheduledTasks(scheduler).Should().BeEmpty();
        }
        finally
        {
            await Teardown(scheduler, all);
        }
    }

    [Fact]
    public async Task Two_workers_each_waiting_on_the_child_in_the_others_LIFO_slot_inline_it_and_each_child_runs_once()
    {
        // Cross waits: worker A waits untimed on the child sitting in worker B's private LIFO slot and B on A's, both
        // at once, with the watchdog free to rescue either slot to the global queue meanwhile. Inlining from a peer's
        // slot is the only way out; the owner's stale slot entry must then be skipped.
        var scheduler = Create(2);
        Task? pair = null;
        try
        {
            for (int round = 0; round < 200; round++)
            {
                using var forked = new Barrier(2);
                var children = new Task[2];
                int[] runs = new int[2];
                pair = Task.WhenAll(Enumerable.Range(0, 2).Select(w => scheduler.Factory.StartNew(() =>
                {
                    children[w] = Task.Factory.StartNew(() => Interlocked.Increment(ref runs[w]), CancellationToken.None, TaskCreationOptions.None, scheduler);
                    forked.SignalAndWait(Bound).Should().BeTrue();
                    Volatile.Read(ref children[1 - w]).Wait();
                    return scheduler.IsWorkerThread;
                })));
                await pair.WithTimeout($"round {round}", Bound);
                await Task.WhenAll(children).WithTimeout(Bound);
                runs.Should().Equal([1, 1], $"round {round}");
            }

            scheduler.GetStatistics().TasksInlined.Should().BeGreaterThan(0);
        }
        finally
        {
            await Teardown(scheduler, pair);
        }
    }

    [Fact]
    public async Task Recursive_Parallel_Invoke_with_a_cancellable_token_and_triply_nested_Parallel_For_complete_on_two_workers()
    {
        // Parallel.Invoke and Parallel.For join through untimed waits that inline, however deep the recursion goes past
        // the worker count; a CancellationToken in the ParallelOptions (which disables inlining of a plain Task.Wait(token))
        // must not change that. The innermost bodies also fork-join with .Result.
        var scheduler = Create(2);
        Task? work = null;
        try
        {
            using var cts = new CancellationTokenSource();
            var options = new ParallelOptions { TaskScheduler = scheduler, CancellationToken = cts.Token };
            int leaves = 0;
            void Split(int depth)
            {
                if (depth == 0)
                {
                    Interlocked.Increment(ref leaves);
                    return;
                }

                Parallel.Invoke(options, () => Split(depth - 1), () => Split(depth - 1));
            }

            work = scheduler.Factory.StartNew(() => Split(10));
            await work.WithTimeout("recursive Parallel.Invoke", Bound);
            leaves.Should().Be(1_024);

            int sum = 0;
            int offWorker = 0;
            work = scheduler.Factory.StartNew(() => Parallel.For(0, 6, options, i => Parallel.For(0, 6, options, j => Parallel.For(0, 6, options, k =>
            {
                if (!scheduler.IsWorkerThread)
                {
                    Interlocked.Increment(ref offWorker);
                }

                Interlocked.Add(ref sum, Task.Factory.StartNew(() => 1, CancellationToken.None, TaskCreationOptions.None, scheduler).Result);
            }))));
            await work.WithTimeout("nested Parallel.For", Bound);
            sum.Should().Be(216);
            offWorker.Should().Be(0);
        }
        finally
        {
            await Teardown(scheduler, work);
        }
    }

    [Fact]
    public async Task A_bounded_Dataflow_block_asking_for_more_parallelism_than_workers_never_runs_more_bodies_at_once_than_MaximumConcurrencyLevel()
    {
        // XML doc of MaximumConcurrencyLevel: "tasks never run on more threads at once (LongRunning tasks aside)". The
        // block asks for 8 concurrent bodies with a capacity of 2; each body fork-joins with .Result (inlined on its
        // worker). Every item must be processed exactly once, and never more bodies at once than workers.
        var scheduler = Create(2);
        Task? completion = null;
        try
        {
            int[] hits = new int[400];
            int inBody = 0;
            int maxInBody = 0;
            int offWorker = 0;
            var block = new ActionBlock<int>(
                i =>
                {
                    int now = Interlocked.Increment(ref inBody);
                    int seen;
                    while ((seen = Volatile.Read(ref maxInBody)) < now && Interlocked.CompareExchange(ref maxInBody, now, seen) != seen)
                    {
                    }

                    if (!scheduler.IsWorkerThread)
                    {
                        Interlocked.Increment(ref offWorker);
                    }

                    Thread.SpinWait(200);
                    int one = Task.Factory.StartNew(() => 1, CancellationToken.None, TaskCreationOptions.None, scheduler).Result;
                    Interlocked.Add(ref hits[i], one);
                    Interlocked.Decrement(ref inBody);
                },
                new ExecutionDataflowBlockOptions { TaskScheduler = scheduler, MaxDegreeOfParallelism = 8, BoundedCapacity = 2 });
            completion = block.Completion;
            for (int i = 0; i < hits.Length; i++)
            {
                (await block.SendAsync(i).WaitAsync(Bound)).Should().BeTrue();
            }

            block.Complete();
            await completion.WithTimeout("the block's completion", Bound);
            hits.Should().OnlyContain(h => h == 1);
            offWorker.Should().Be(0);
            maxInBody.Should().BeLessThanOrEqualTo(scheduler.MaximumConcurrencyLevel);
        }
        finally
        {
            await Teardown(scheduler, completion);
        }
    }

    [Fact]
    public async Task A_task_that_disposes_its_own_scheduler_can_still_fork_join_with_Result_and_DisposeAsync_then_ends()
    {
        // Dispose on a worker does not wait; what the worker queues afterwards is its own work (accepted, drained), and a
        // blocking join must still inline it. Outside producers are refused from then on.
        var scheduler = Create(2);
        Task<int>? root = null;
        try
        {
            int Fib(int n) => n < 2
                ? n
                : Task.Factory.StartNew(() => Fib(n - 1), CancellationToken.None, TaskCreationOptions.None, scheduler).Result
                  + Task.Factory.StartNew(() => Fib(n - 2), CancellationToken.None, TaskCreationOptions.None, scheduler).Result;

            root = scheduler.Factory.StartNew(() =>
            {
                scheduler.Dispose();
                return Fib(15);
            });
            (await root.WithTimeout("fork-join after Dispose on a worker", Bound)).Should().Be(610);
            await scheduler.DisposeAsync().AsTask().WithTimeout("DisposeAsync after the fork-join", Bound);
            Action late = () => scheduler.Factory.StartNew(() => { });
            late.Should().Throw<TaskSchedulerException>().WithInnerException<ObjectDisposedException>();
        }
        finally
        {
            await Teardown(scheduler, root);
        }
    }

    [Fact]
    public async Task Blocking_fork_join_inside_a_PipeScheduler_callback_on_the_only_worker_inlines()
    {
        // A pipe callback runs in the worker's carrier task (docs: "The carrier task"), not in a task of its own: an
        // unqualified StartNew there must still reach this scheduler, and a .Result must still inline on the one worker
        // (the carrier is no task the wait could be confused with), also with a child forked before the tree and joined
        // after it, left behind in the deque.
        var scheduler = Create(1);
        var done = new TaskCompletionSource<(int Fib, bool Current)>(TaskCreationOptions.RunContinuationsAsynchronously);
        try
        {
            int Fib(int n) => n < 2
                ? n
                : Task.Factory.StartNew(() => Fib(n - 1)).Result + Task.Factory.StartNew(() => Fib(n - 2)).Result;

            scheduler.PipeScheduler.Schedule(
                _ =>
                {
                    try
                    {
                        bool current = TaskScheduler.Current == scheduler;
                        using var gate = new ManualResetEventSlim();
                        Task<bool> child = Task.Factory.StartNew(() => gate.IsSet);
                        int fib = Fib(12);
                        gate.Set();
                        done.SetResult((fib, current && child.Result));
                    }
                    catch (Exception e)
                    {
                        done.SetException(e);
                    }
                },
                null);

            (await done.Task.WithTimeout("fork-join in a pipe callback", Bound)).Should().Be((144, true), "the early child runs inline at its join, after the gate was set");
            scheduler.GetStatistics().TasksInlined.Should().BeGreaterThan(0);
        }
        finally
        {
            await Teardown(scheduler, done.Task);
        }
    }

    // ---------------------------------------------------------------------------------------------------------------
    // Deadlocks: every worker blocked on work that only a worker can run. The ThreadPool survives each of these by
    // injecting a thread; the scheduler did not, and each of these hung for good (found by this file, session 29). The
    // watchdog now starts a compensation thread after every worker has stood still for a while with work queued
    // (WorkStealingTaskScheduler.Compensation.cs, docs/scheduling.md "Blocking compensation").
    // ---------------------------------------------------------------------------------------------------------------

    [Fact]
    public async Task A_parent_inlined_by_Wait_whose_attached_child_is_queued_completes_while_every_worker_waits()
    {
        // API.md: "Task.Wait() / .Result on a worker inlines the awaited task when it is still queued, so fork-join with
        // blocking waits cannot deadlock a small scheduler." Structured fork-join: the parent forks an AttachedToParent
        // child and returns; the waiter's untimed Wait() inlines the parent (TasksInlined counts it), which then waits
        // for its child — queued in the waiting worker's own LIFO slot, where nothing runs it once both workers wait.
        var scheduler = Create(2);
        Task? both = null;
        try
        {
            using var rendezvous = new Barrier(2);
            var parents = new Task[2];
            both = Task.WhenAll(Enumerable.Range(0, 2).Select(w => scheduler.Factory.StartNew(() =>
            {
                rendezvous.SignalAndWait(Bound).Should().BeTrue("each worker takes one waiter");
                parents[w] = Task.Factory.StartNew(
                    () => Task.Factory.StartNew(() => { }, CancellationToken.None, TaskCreationOptions.AttachedToParent, scheduler),
                    CancellationToken.None,
                    TaskCreationOptions.None,
                    scheduler);
                parents[w].Wait();
            })));

            bool finished = await Finishes(both, DeadlockBound);
            finished.Should().BeTrue(
                $"a parent whose only attached child is a no-op must complete; after {DeadlockBound.TotalSeconds} s the parents are " +
                $"{string.Join(", ", parents.Select(p => p?.Status.ToString() ?? "not created"))}, {Describe(scheduler)}");
        }
        finally
        {
            await Teardown(scheduler, both);
        }
    }

    public enum NonInliningJoin
    {
        WaitWithCancellationToken,
        WaitWithTimeout,
        WhenAllWait,
    }

    [Theory]
    [InlineData(NonInliningJoin.WaitWithCancellationToken)]
    [InlineData(NonInliningJoin.WaitWithTimeout)]
    [InlineData(NonInliningJoin.WhenAllWait)]
    public async Task Fork_join_with_a_wait_the_BCL_does_not_inline_completes_while_every_worker_waits(NonInliningJoin join)
    {
        // The same fork-join as fib with .Result, joined with waits users write every day: Wait(token), Wait(timeout),
        // Task.WhenAll(a, b).Wait(). The BCL never calls TryExecuteTaskInline for these (a timed or cancellable wait, a
        // promise), so the children wait in the waiting workers' queues; with both workers joining at once, nobody runs
        // them. On the ThreadPool the same code completes (starvation injection). Docs and API.md promise that fork-join
        // with blocking waits cannot deadlock a small scheduler, and document no exception for these waits.
        var scheduler = Create(2);
        Task<bool[]>? both = null;
        using var abort = new CancellationTokenSource();
        try
        {
            using var rendezvous = new Barrier(2);
            both = Task.WhenAll(Enumerable.Range(0, 2).Select(_ => scheduler.Factory.StartNew(() =>
            {
                rendezvous.SignalAndWait(Bound).Should().BeTrue("each worker takes one joiner");
                Task<int> a = Task.Factory.StartNew(() => 1, CancellationToken.None, TaskCreationOptions.None, scheduler);
                Task<int> b = Task.Factory.StartNew(() => 2, CancellationToken.None, TaskCreationOptions.None, scheduler);
                switch (join)
                {
                    case NonInliningJoin.WaitWithCancellationToken:
                        a.Wait(abort.Token);
                        b.Wait(abort.Token);
                        return true;
                    case NonInliningJoin.WaitWithTimeout:
                        // Longer than the deadlock bound, so the test reports the deadlock and the workers free themselves.
                        // b's wait as long: it starts once a ran, and under load the no-op b can complete seconds after
                        // a (half a second was a positive bound of its own).
                        return a.Wait(DeadlockBound + TimeSpan.FromSeconds(0.5)) & b.Wait(DeadlockBound);
                    default:
                        Task.WhenAll(a, b).Wait();
                        return true;
                }
            })));

            bool finished = await Finishes(both, DeadlockBound);
            string state = Describe(scheduler);
            if (!finished && join != NonInliningJoin.WhenAllWait)
            {
                abort.Cancel(); // frees the cancellable joiners; the timed ones free themselves (the WhenAll ones stay blocked:
                await Finishes(both, Bound); // background threads, and Teardown does not wait for them)
            }

            finished.Should().BeTrue($"two no-op children joined with {join} must complete; after {DeadlockBound.TotalSeconds} s, {state}");
            (await both).Should().OnlyContain(joined => joined, $"every {join} must see its children complete");
        }
        finally
        {
            await Teardown(scheduler, both);
        }
    }

    [Fact]
    public async Task Synchronous_SemaphoreSlim_waiters_on_every_worker_do_not_strand_the_async_holder_that_releases_it()
    {
        // The mixed sync/async lock of real code bases: one task holds a SemaphoreSlim across an await (Task.Delay, I/O),
        // others take it with a blocking Wait on workers. The holder's await resumption comes from a timer thread to the
        // global queue, and with every worker blocked in Wait it never runs: the release never comes. The ThreadPool
        // injects a thread; docs/scheduling.md describes the rescue of a blocked worker's LIFO task by an idle peer only.
        var scheduler = Create(2);
        Task? all = null;
        using var abort = new CancellationTokenSource();
        try
        {
            using var semaphore = new SemaphoreSlim(1);
            var acquired = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            var waitersBlocking = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            int waiting = 0;
            Task holder = scheduler.Factory.StartNew(async () =>
            {
                await semaphore.WaitAsync();
                acquired.SetResult();
                try
                {
                    await waitersBlocking.Task;
                    await Task.Delay(20);
                }
                finally
                {
                    semaphore.Release();
                }
            }).Unwrap();
            await acquired.Task.WaitAsync(Bound);

            Task[] waiters = [.. Enumerable.Range(0, 2).Select(_ => scheduler.Factory.StartNew(() =>
            {
                if (Interlocked.Increment(ref waiting) == 2)
                {
                    waitersBlocking.SetResult();
                }

                semaphore.Wait(abort.Token);
                semaphore.Release();
            }))];
            all = Task.WhenAll(waiters.Append(holder));

            bool finished = await Finishes(all, DeadlockBound);
            string state = $"holder {holder.Status}, waiters {string.Join(", ", waiters.Select(w => w.Status))}, {Describe(scheduler)}";
            if (!finished)
            {
                abort.Cancel();
                await Finishes(all, Bound);
            }

            finished.Should().BeTrue($"the holder's 20 ms delay must resume and release; after {DeadlockBound.TotalSeconds} s, {state}");
        }
        finally
        {
            await Teardown(scheduler, all);
        }
    }

    // ---------------------------------------------------------------------------------------------------------------

    private static async Task<bool> Finishes(Task task, TimeSpan bound) =>
        await Task.WhenAny(task, Task.Delay(bound)) == task;

    private static string Describe(WorkStealingTaskScheduler scheduler)
    {
        List<Task> scheduled = SchedulerTestHelpers.ScheduledTasks(scheduler);
        return $"{scheduler.GetStatistics()}, {scheduled.Count} task(s) still scheduled ({string.Join(", ", scheduled.Select(t => t.Status))})";
    }

    /// <summary>
    /// Disposes <paramref name="scheduler"/> with a bounded wait when <paramref name="work"/> finished; a scheduler whose
    /// workers are still blocked (a deadlock the test already reported) is asked to dispose but not waited for: its Dispose
    /// would wait for the blocked workers for good, and they are background threads.
    /// </summary>
    private static async Task Teardown(WorkStealingTaskScheduler scheduler, Task? work)
    {
        if (work is null || work.IsCompleted)
        {
            await scheduler.DisposeAsync().AsTask().WithTimeout("DisposeAsync of the scheduler", Bound);
        }
        else
        {
            _ = scheduler.DisposeAsync().AsTask();
        }
    }
}
