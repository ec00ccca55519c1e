using System.Collections.Concurrent;
using System.Threading.Channels;
using System.Threading.Tasks.Dataflow;
using Scheduler.Sources;

namespace Scheduler.Tests.Scheduling;

/// <summary>
/// Adversarial tests of the opt-in synchronization-context mode (<see cref="WorkStealingTaskSchedulerOptions.UseSynchronizationContext"/>,
/// WorkStealingSynchronizationContext, docs/scheduling.md "await, and the cost the BCL adds"): misuse of Post and Send,
/// exceptions from posted callbacks, contexts of two schedulers, execution-context flow, and Dispose while posts are in
/// flight.
/// </summary>
public sealed class AdversarialSyncContextTests
{
    private static readonly TimeSpan Bound = TimeSpan.FromSeconds(10);

    private static readonly AsyncLocal<string?> s_local = new();

    private static WorkStealingTaskScheduler Create(int workers, string prefix = "AdvCtx", int fairness = 61) =>
        new(new WorkStealingTaskSchedulerOptions
        {
            WorkerCount = workers,
            UseSynchronizationContext = true,
            SpinIterations = 30,
            FairnessInterval = fairness,
            ThreadNamePrefix = prefix,
        });

    private static Task<SynchronizationContext> ContextOf(WorkStealingTaskScheduler scheduler) =>
        scheduler.Factory.StartNew(() => SynchronizationContext.Current!);

    private sealed class DeliberatePostException(string message) : DeliberateTestException(message);

    [Fact]
    public async Task Post_and_Send_reject_a_null_callback_from_a_worker_and_from_outside_and_the_scheduler_stays_usable()
    {
        var scheduler = Create(1);
        await using var disposeScheduler = SchedulerTestHelpers.DisposeWithin(scheduler);
        SynchronizationContext context = await ContextOf(scheduler).WaitAsync(Bound);

        FluentActions.Invoking(() => context.Post(null!, null)).Should().Throw<ArgumentNullException>();
        FluentActions.Invoking(() => context.Send(null!, null)).Should().Throw<ArgumentNullException>();
        (Type? Post, Type? Send) onWorker = await scheduler.Factory.StartNew(() =>
        {
            Type? post = null, send = null;
            try
            {
                SynchronizationContext.Current!.Post(null!, null);
            }
            catch (Exception e)
            {
                post = e.GetType();
            }

            try
            {
                SynchronizationContext.Current!.Send(null!, null);
            }
            catch (Exception e)
            {
                send = e.GetType();
            }

            return (post, send);
        }).WaitAsync(Bound);
        onWorker.Post.Should().Be<ArgumentNullException>();
        onWorker.Send.Should().Be<ArgumentNullException>();

        var ran = new TaskCompletionSource<bool>(TaskCreationOptions.RunContinuationsAsynchronously);
        context.Post(_ => ran.SetResult(scheduler.IsWorkerThread), null);
        (await ran.Task.WaitAsync(Bound)).Should().BeTrue("a refused null post queues nothing and breaks nothing");
    }

    [Fact]
    public async Task Every_worker_has_the_same_context_per_scheduler_its_copy_posts_to_the_same_workers_and_two_schedulers_differ()
    {
        var a = Create(2, "AdvCtxA");
        await using var disposeA = SchedulerTestHelpers.DisposeWithin(a);
        var b = Create(2, "AdvCtxB");
        await using var disposeB = SchedulerTestHelpers.DisposeWithin(b);

        // Hold both workers of A at once, so each reports its own context.
        using var barrier = new Barrier(2);
        SynchronizationContext?[] seen = await Task.WhenAll(Enumerable.Range(0, 2).Select(_ => a.Factory.StartNew(() =>
        {
            barrier.SignalAndWait(Bound).Should().BeTrue();
            return SynchronizationContext.Current;
        }, TaskCreationOptions.None))).WaitAsync(Bound);
        seen[0].Should().NotBeNull();
        seen[1].Should().BeSameAs(seen[0], "one context per scheduler, installed on every worker");

        SynchronizationContext contextA = seen[0]!;
        SynchronizationContext contextB = await ContextOf(b).WaitAsync(Bound);
        contextB.Should().NotBeSameAs(contextA);
        contextB.Should().NotBe(contextA);

        SynchronizationContext copy = contextA.CreateCopy();
        copy.Should().NotBeNull();
        var where = new TaskCompletionSource<(bool OnA, bool OnB, bool CurrentIsA, SynchronizationContext? Context)>(TaskCreationOptions.RunContinuationsAsynchronously);
        copy.Post(_ => where.SetResult((a.IsWorkerThread, b.IsWorkerThread, TaskScheduler.Current == a, SynchronizationContext.Current)), null);
        var result = await where.Task.WaitAsync(Bound);
        result.OnA.Should().BeTrue("a copy of A's context posts to A's workers");
        result.OnB.Should().BeFalse();
        result.CurrentIsA.Should().BeTrue("posted code sees the scheduler as TaskScheduler.Current (the carrier task)");
        result.Context.Should().BeSameAs(contextA);
    }

    [Fact]
    public async Task A_throwing_post_from_outside_and_from_a_worker_is_raised_as_unhandled_and_the_only_worker_lives_on()
    {
        UnhandledExceptions.EnsureInstalled();
        var scheduler = Create(1);
        await using var disposeScheduler = SchedulerTestHelpers.DisposeWithin(scheduler);
        SynchronizationContext context = await ContextOf(scheduler).WaitAsync(Bound);

        var fromOutside = new DeliberatePostException("post from outside");
        var fromWorker = new DeliberatePostException("post from a worker");
        context.Post(_ => throw fromOutside, null);
        await scheduler.Factory.StartNew(() => SynchronizationContext.Current!.Post(_ => throw fromWorker, null)).WaitAsync(Bound);

        SpinWait.SpinUntil(() => UnhandledExceptions.Contains(fromOutside) && UnhandledExceptions.Contains(fromWorker), Bound)
            .Should().BeTrue("a throwing post surfaces as unhandled, like a ThreadPool work item's exception; it must not vanish");

        // The single worker survived both, and posts and tasks still run on it.
        var after = new TaskCompletionSource<bool>(TaskCreationOptions.RunContinuationsAsynchronously);
        context.Post(_ => after.SetResult(scheduler.IsWorkerThread), null);
        (await after.Task.WaitAsync(Bound)).Should().BeTrue();
        (await scheduler.Factory.StartNew(() => scheduler.IsWorkerThread).WaitAsync(Bound)).Should().BeTrue();
    }

    [Fact]
    public async Task An_async_void_method_on_a_worker_resumes_on_the_worker_and_its_late_exception_is_raised_as_unhandled()
    {
        UnhandledExceptions.EnsureInstalled();
        var scheduler = Create(1);
        await using var disposeScheduler = SchedulerTestHelpers.DisposeWithin(scheduler);
        var gate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var resumedOnWorker = new TaskCompletionSource<bool>(TaskCreationOptions.RunContinuationsAsynchronously);
        var thrown = new DeliberatePostException("async void after an await");

        await scheduler.Factory.StartNew(() => AsyncVoid()).WaitAsync(Bound);
        new Thread(() => gate.SetResult()).Start();
        (await resumedOnWorker.Task.WaitAsync(Bound)).Should().BeTrue("the async void method captured the worker's context");
        SpinWait.SpinUntil(() => UnhandledExceptions.Contains(thrown), Bound).Should().BeTrue("the async void method's exception is posted to the context and raised as unhandled");
        (await scheduler.Factory.StartNew(() => scheduler.IsWorkerThread).WaitAsync(Bound)).Should().BeTrue("the worker lives on");

        async void AsyncVoid()
        {
            await gate.Task;
            resumedOnWorker.SetResult(scheduler.IsWorkerThread && SynchronizationContext.Current is not null);
            await Task.Yield();
            throw thrown;
        }
    }

    [Fact]
    public async Task Send_from_a_worker_of_another_context_mode_scheduler_runs_on_the_target_and_a_nested_Send_to_itself_runs_inline()
    {
        var a = Create(1, "AdvCtxA");
        await using var disposeA = SchedulerTestHelpers.DisposeWithin(a);
        var b = Create(1, "AdvCtxB");
        await using var disposeB = SchedulerTestHelpers.DisposeWithin(b);
        SynchronizationContext contextB = await ContextOf(b).WaitAsync(Bound);

        (bool RanOnB, bool RanOnA, bool NestedInline, bool BackOnA, bool OwnContextAfterSend) result = await a.Factory.StartNew(() =>
        {
            SynchronizationContext mine = SynchronizationContext.Current!;
            bool ranOnB = false, ranOnA = true, nestedInline = false;
            contextB.Send(_ =>
            {
                ranOnB = b.IsWorkerThread;
                ranOnA = a.IsWorkerThread;
                int thread = Environment.CurrentManagedThreadId;
                SynchronizationContext.Current!.Send(_ => nestedInline = Environment.CurrentManagedThreadId == thread, null);
            }, null);
            return (ranOnB, ranOnA, nestedInline, a.IsWorkerThread, SynchronizationContext.Current == mine);
        }).WaitAsync(Bound);

        result.RanOnB.Should().BeTrue("Send to B's context from A's worker runs the callback on B's worker");
        result.RanOnA.Should().BeFalse();
        result.NestedInline.Should().BeTrue("Send on a worker of the context's own scheduler runs inline (no self-deadlock)");
        result.BackOnA.Should().BeTrue();
        result.OwnContextAfterSend.Should().BeTrue("Send must not leave B's context installed on A's worker");
    }

    [Fact]
    public async Task A_LongRunning_task_has_no_worker_context_yet_its_awaits_and_its_Send_reach_the_workers()
    {
        var scheduler = Create(1);
        await using var disposeScheduler = SchedulerTestHelpers.DisposeWithin(scheduler);
        SynchronizationContext context = await ContextOf(scheduler).WaitAsync(Bound);

        (bool OnWorkerAtStart, bool ContextIsWorkers, bool SendOnWorker, bool AfterAwaitOnWorker, bool AfterYieldOnWorker) result =
            await scheduler.Factory.StartNew(async () =>
            {
                bool onWorkerAtStart = scheduler.IsWorkerThread;
                bool contextIsWorkers = ReferenceEquals(SynchronizationContext.Current, context);
                bool sendOnWorker = false;
                context.Send(_ => sendOnWorker = scheduler.IsWorkerThread, null);
                await Task.Delay(1);
                bool afterAwait = scheduler.IsWorkerThread;
                await Task.Yield();
                return (onWorkerAtStart, contextIsWorkers, sendOnWorker, afterAwait, scheduler.IsWorkerThread);
            }, TaskCreationOptions.LongRunning).Unwrap().WaitAsync(Bound);

        result.OnWorkerAtStart.Should().BeFalse("LongRunning runs on a dedicated thread, never a worker");
        result.ContextIsWorkers.Should().BeFalse("the context is installed on workers; a LongRunning task runs on a dedicated thread");
        result.SendOnWorker.Should().BeTrue("Send from a thread that is no worker runs the callback on a worker");
        result.AfterAwaitOnWorker.Should().BeTrue("the await inside the LongRunning task resumes on the scheduler (TaskScheduler.Current)");
        result.AfterYieldOnWorker.Should().BeTrue();
    }

    [Fact]
    public async Task An_AsyncLocal_flows_through_OnCompleted_of_a_Task_awaiter_resuming_through_the_context()
    {
        // TaskAwaiter.OnCompleted (unlike UnsafeOnCompleted) promises to flow the ExecutionContext. Under a
        // synchronization context the runtime posts the continuation from inside the captured execution context and leaves
        // the flow to the context's Post (the base SynchronizationContext, WinForms and WPF all capture it). A custom
        // awaiter that wraps TaskAwaiter.OnCompleted (or code that calls it directly) is resumed this way.
        (await TaskAwaiterOnCompletedSees(useContext: false)).Should().Be(("flowed", true), "control: without the context the value flows");
        (await TaskAwaiterOnCompletedSees(useContext: true)).Should().Be(("flowed", true), "OnCompleted flows the ExecutionContext captured when it was called");

        static async Task<(string? Value, bool OnWorker)> TaskAwaiterOnCompletedSees(bool useContext)
        {
            var scheduler = new WorkStealingTaskScheduler(new WorkStealingTaskSchedulerOptions { WorkerCount = 2, UseSynchronizationContext = useContext, SpinIterations = 30, ThreadNamePrefix = "AdvCtx" });
            await using var disposeScheduler = SchedulerTestHelpers.DisposeWithin(scheduler);
            var gate = new TaskCompletionSource(TaskCreationOptions.None);
            var seen = new TaskCompletionSource<(string? Value, bool OnWorker)>(TaskCreationOptions.RunContinuationsAsynchronously);

            await scheduler.Factory.StartNew(() =>
            {
                s_local.Value = "flowed";
                gate.Task.GetAwaiter().OnCompleted(() => seen.SetResult((s_local.Value, scheduler.IsWorkerThread)));
                s_local.Value = null;
            }).WaitAsync(Bound);

            new Thread(() => gate.SetResult()).Start(); // completes on a foreign thread: the continuation is posted
            return await seen.Task.WaitAsync(Bound);
        }
    }

    [Fact]
    public async Task An_AsyncLocal_flows_through_OnCompleted_of_a_yield_awaiter_on_a_worker()
    {
        (await YieldOnCompletedSees(useContext: false)).Should().Be(("flowed", true), "control: without the context the value flows");
        (await YieldOnCompletedSees(useContext: true)).Should().Be(("flowed", true), "YieldAwaiter.OnCompleted flows the ExecutionContext (UnsafeOnCompleted is the one that does not)");

        static async Task<(string? Value, bool OnWorker)> YieldOnCompletedSees(bool useContext)
        {
            var scheduler = new WorkStealingTaskScheduler(new WorkStealingTaskSchedulerOptions { WorkerCount = 1, UseSynchronizationContext = useContext, SpinIterations = 30, ThreadNamePrefix = "AdvCtx" });
            await using var disposeScheduler = SchedulerTestHelpers.DisposeWithin(scheduler);
            var seen = new TaskCompletionSource<(string? Value, bool OnWorker)>(TaskCreationOptions.RunContinuationsAsynchronously);

            await scheduler.Factory.StartNew(() =>
            {
                s_local.Value = "flowed";
                Task.Yield().GetAwaiter().OnCompleted(() => seen.SetResult((s_local.Value, scheduler.IsWorkerThread)));
                s_local.Value = null;
            }).WaitAsync(Bound);

            return await seen.Task.WaitAsync(Bound);
        }
    }

    [Fact]
    public async Task An_AsyncLocal_of_the_caller_is_seen_by_a_Send_callback_run_on_a_worker()
    {
        // Send is synchronous: the caller waits for the callback as for a method call. The base SynchronizationContext
        // runs it on the caller's thread, WinForms' Invoke and WPF's Dispatcher.Invoke capture the caller's
        // ExecutionContext; code inside sees the caller's AsyncLocal values (an Activity, a tenant, a logging scope).
        var scheduler = Create(1);
        await using var disposeScheduler = SchedulerTestHelpers.DisposeWithin(scheduler);
        SynchronizationContext context = await ContextOf(scheduler).WaitAsync(Bound);

        (string? Base, string? Ours, bool OnWorker) seen = await Task.Run(() =>
        {
            s_local.Value = "caller";
            string? viaBase = null, viaOurs = null;
            bool onWorker = false;
            new SynchronizationContext().Send(_ => viaBase = s_local.Value, null);
            context.Send(_ =>
            {
                viaOurs = s_local.Value;
                onWorker = scheduler.IsWorkerThread;
            }, null);
            return (viaBase, viaOurs, onWorker);
        }).WaitAsync(Bound);

        seen.Base.Should().Be("caller", "control: the base context's Send sees the caller's value");
        seen.OnWorker.Should().BeTrue();
        seen.Ours.Should().Be("caller", "Send runs the callback on the caller's behalf, in the caller's ExecutionContext");
    }

    [Fact]
    public async Task A_callback_that_reposts_itself_forever_cannot_starve_yields_local_tasks_or_outside_work()
    {
        // docs/scheduling.md: "no starvation: Task.Yield loops, endless local spawn chains and ping-pong pairs cannot
        // starve other tasks". A post from a worker goes to its LIFO slot (it is taken for an await resuming): a callback
        // that posts itself again (a message pump) is an endless local chain through the context.
        var scheduler = Create(1);
        await using var disposeScheduler = SchedulerTestHelpers.DisposeWithin(scheduler);
        using var stop = new CancellationTokenSource();
        long pumped = 0;
        var yielded = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        Task? local = null;

        await scheduler.Factory.StartNew(() =>
        {
            SynchronizationContext context = SynchronizationContext.Current!;
            SendOrPostCallback? pump = null;
            pump = _ =>
            {
                Interlocked.Increment(ref pumped);
                if (!stop.IsCancellationRequested)
                {
                    context.Post(pump!, null);
                }
            };
            context.Post(pump, null);
            local = Task.Factory.StartNew(() => { }, CancellationToken.None, TaskCreationOptions.None, scheduler);
            _ = YieldThenSignal(yielded);
        }).WaitAsync(Bound);

        try
        {
            SynchronizationContext outsideContext = await scheduler.Factory.StartNew(() => SynchronizationContext.Current!).WaitAsync(Bound);
            var outsidePost = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            outsideContext.Post(_ => outsidePost.SetResult(), null);

            await outsidePost.Task.WaitAsync(Bound);
            await yielded.Task.WaitAsync(Bound);
            await local!.WaitAsync(Bound);
            Interlocked.Read(ref pumped).Should().BeGreaterThan(0);
        }
        finally
        {
            stop.Cancel();
        }

        static async Task YieldThenSignal(TaskCompletionSource done)
        {
            await Task.Yield();
            done.SetResult();
        }
    }

    [Fact]
    public async Task Posts_and_Sends_from_outside_racing_Dispose_each_run_exactly_once_and_never_throw_into_the_caller()
    {
        for (int round = 0; round < 3; round++)
        {
            var scheduler = Create(2);
            SynchronizationContext context = await ContextOf(scheduler).WaitAsync(Bound);
            const int Posters = 3;
            const int PerPoster = 4_000;
            var counts = new int[Posters * PerPoster];
            int sends = 0, sendsReturned = 0;
            var failures = new ConcurrentQueue<Exception>();
            using var start = new Barrier(Posters + 2);
            var threads = new List<Thread>();
            for (int p = 0; p < Posters; p++)
            {
                int first = p * PerPoster;
                threads.Add(new Thread(() =>
                {
                    start.SignalAndWait();
                    for (int i = first; i < first + PerPoster; i++)
                    {
                        try
                        {
                            context.Post(static state => { var (array, index) = ((int[], int))state!; Interlocked.Increment(ref array[index]); }, (counts, i));
                        }
                        catch (Exception e)
                        {
                            failures.Enqueue(e);
                        }
                    }
                }) { IsBackground = true });
            }

            threads.Add(new Thread(() =>
            {
                start.SignalAndWait();
                for (int i = 0; i < 200; i++)
                {
                    try
                    {
                        context.Send(_ => Interlocked.Increment(ref sends), null);
                        Interlocked.Increment(ref sendsReturned);
                    }
                    catch (Exception e)
                    {
                        failures.Enqueue(e);
                    }
                }
            }) { IsBackground = true });

            threads.ForEach(t => t.Start());
            start.SignalAndWait();
            Thread.Yield();
            await scheduler.DisposeAsync().AsTask().WaitAsync(Bound);
            foreach (Thread thread in threads)
            {
                thread.Join(Bound).Should().BeTrue("a poster or sender hung");
            }

            failures.Should().BeEmpty("posts are continuations of work in flight: they never throw for disposal");
            SpinWait.SpinUntil(() => Volatile.Read(ref sends) == 200 && counts.All(c => Volatile.Read(ref c) >= 1), Bound);
            sendsReturned.Should().Be(200);
            sends.Should().Be(200, "every Send runs its callback exactly once");
            counts.Count(c => c == 0).Should().Be(0, "round {0}: no post is lost", round);
            counts.Count(c => c > 1).Should().Be(0, "round {0}: no post runs twice", round);
        }
    }

    [Fact]
    public async Task A_posted_callback_that_disposes_its_scheduler_still_gets_its_own_posts_and_spawns_run_and_DisposeAsync_ends()
    {
        var scheduler = Create(1);
        SynchronizationContext context = await ContextOf(scheduler).WaitAsync(Bound);
        var secondPost = new TaskCompletionSource<bool>(TaskCreationOptions.RunContinuationsAsynchronously);
        var spawned = new TaskCompletionSource<bool>(TaskCreationOptions.RunContinuationsAsynchronously);
        var yielded = new TaskCompletionSource<bool>(TaskCreationOptions.RunContinuationsAsynchronously);
        var disposedOnWorker = new TaskCompletionSource<Exception?>(TaskCreationOptions.RunContinuationsAsynchronously);

        context.Post(_ =>
        {
            try
            {
                scheduler.Dispose(); // on a worker: requests shutdown and returns (a thread cannot join itself)
                SynchronizationContext.Current!.Post(_ => secondPost.SetResult(scheduler.IsWorkerThread), null);
                Task.Factory.StartNew(() => spawned.SetResult(scheduler.IsWorkerThread), CancellationToken.None, TaskCreationOptions.None, scheduler);
                _ = YieldThenSignal(scheduler, yielded);
                disposedOnWorker.SetResult(null);
            }
            catch (Exception e)
            {
                disposedOnWorker.SetResult(e);
            }
        }, null);

        (await disposedOnWorker.Task.WaitAsync(Bound)).Should().BeNull("Dispose on a worker does not throw and does not wait");
        (await secondPost.Task.WaitAsync(Bound)).Should().BeTrue("work queued while the scheduler drains runs on its workers");
        (await spawned.Task.WaitAsync(Bound)).Should().BeTrue();
        (await yielded.Task.WaitAsync(Bound)).Should().BeTrue();
        await scheduler.DisposeAsync().AsTask().WaitAsync(Bound);

        var late = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        context.Post(_ => late.SetResult(), null);
        await late.Task.WaitAsync(Bound);

        static async Task YieldThenSignal(WorkStealingTaskScheduler scheduler, TaskCompletionSource<bool> done)
        {
            await Task.Yield();
            done.SetResult(scheduler.IsWorkerThread);
        }
    }

    [Fact]
    public async Task Awaits_completed_by_another_context_mode_scheduler_resume_exactly_once_on_their_own_scheduler_under_load()
    {
        var a = Create(2, "AdvCtxA");
        await using var disposeA = SchedulerTestHelpers.DisposeWithin(a);
        var b = Create(1, "AdvCtxB");
        await using var disposeB = SchedulerTestHelpers.DisposeWithin(b);
        SynchronizationContext contextB = await ContextOf(b).WaitAsync(Bound);
        const int Loops = 8;
        const int Rounds = 150;
        int wrongPlace = 0;
        var steps = new int[Loops];
        var semaphore = new SemaphoreSlim(0);

        Task[] loops = Enumerable.Range(0, Loops).Select(loop => a.Factory.StartNew(async () =>
        {
            Channel<int> channel = Channel.CreateBounded<int>(1);
            for (int i = 0; i < Rounds; i++)
            {
                switch (i % 6)
                {
                    case 0:
                        await Task.Yield();
                        break;
                    case 1:
                        var tcs = new TaskCompletionSource<int>(); // completed inline on B's worker: the context differs, so it posts
                        contextB.Post(_ => tcs.SetResult(1), null);
                        await tcs.Task;
                        break;
                    case 2:
                        PooledValueTaskSource<int> source = PooledValueTaskSource<int>.Rent();
                        ValueTask<int> pending = source.Task;
                        contextB.Post(_ => source.TrySetResult(2), null);
                        (await pending).Should().Be(2);
                        break;
                    case 3:
                        Task wait = semaphore.WaitAsync();
                        contextB.Post(_ => semaphore.Release(), null);
                        await wait;
                        break;
                    case 4:
                        ValueTask<int> read = channel.Reader.ReadAsync();
                        contextB.Post(_ => channel.Writer.TryWrite(4), null);
                        await read;
                        break;
                    default:
                        await Task.Delay(1);
                        break;
                }

                if (!a.IsWorkerThread || b.IsWorkerThread || SynchronizationContext.Current is null)
                {
                    Interlocked.Increment(ref wrongPlace);
                }

                steps[loop]++;
            }
        }).Unwrap()).ToArray();

        // B is busy with a yield loop of its own meanwhile, checked the same way.
        int wrongOnB = 0;
        using var stopB = new CancellationTokenSource();
        Task bLoop = b.Factory.StartNew(async () =>
        {
            while (!stopB.IsCancellationRequested)
            {
                await Task.Yield();
                if (!b.IsWorkerThread || a.IsWorkerThread)
                {
                    Interlocked.Increment(ref wrongOnB);
                }
            }
        }).Unwrap();

        await Task.WhenAll(loops).WaitAsync(TimeSpan.FromSeconds(20));
        stopB.Cancel();
        await bLoop.WaitAsync(Bound);
        steps.Should().AllSatisfy(s => s.Should().Be(Rounds));
        wrongPlace.Should().Be(0, "every continuation of A's methods runs on A's workers, whoever completed the awaited thing");
        wrongOnB.Should().Be(0);
    }

    [Fact]
    public async Task After_an_inline_resume_Parallel_For_and_an_ActionBlock_that_name_the_scheduler_run_every_body_once_on_its_workers()
    {
        // The documented trade-off: an await completed on a worker of the same scheduler resumes inline with
        // TaskScheduler.Current == Default. Work that names its scheduler must still stay on it.
        var scheduler = Create(2);
        await using var disposeScheduler = SchedulerTestHelpers.DisposeWithin(scheduler);
        const int N = 500;
        var forHits = new int[N];
        var blockHits = new int[N];
        int offScheduler = 0;

        await scheduler.Factory.StartNew(async () =>
        {
            var completedHere = new TaskCompletionSource();
            Task waiting = Wait(completedHere.Task);
            await Task.Factory.StartNew(completedHere.SetResult, CancellationToken.None, TaskCreationOptions.None, scheduler);
            await waiting;

            async Task Wait(Task task)
            {
                await task;
                Parallel.For(0, N, new ParallelOptions { TaskScheduler = scheduler, MaxDegreeOfParallelism = 2 }, i =>
                {
                    Interlocked.Increment(ref forHits[i]);
                    if (!scheduler.IsWorkerThread)
                    {
                        Interlocked.Increment(ref offScheduler);
                    }
                });

                var block = new ActionBlock<int>(async i =>
                {
                    if (!scheduler.IsWorkerThread)
                    {
                        Interlocked.Increment(ref offScheduler);
                    }

                    await Task.Yield();
                    if (!scheduler.IsWorkerThread)
                    {
                        Interlocked.Increment(ref offScheduler);
                    }

                    Interlocked.Increment(ref blockHits[i]);
                }, new ExecutionDataflowBlockOptions { TaskScheduler = scheduler, MaxDegreeOfParallelism = 2 });
                for (int i = 0; i < N; i++)
                {
                    block.Post(i).Should().BeTrue();
                }

                block.Complete();
                await block.Completion;
                if (!scheduler.IsWorkerThread)
                {
                    Interlocked.Increment(ref offScheduler);
                }
            }
        }).Unwrap().WaitAsync(TimeSpan.FromSeconds(20));

        forHits.Should().AllSatisfy(h => h.Should().Be(1));
        blockHits.Should().AllSatisfy(h => h.Should().Be(1));
        offScheduler.Should().Be(0);
    }

    [Fact]
    public async Task Blocking_Result_fork_join_completes_on_one_worker_in_context_mode()
    {
        var scheduler = Create(1);
        await using var disposeScheduler = SchedulerTestHelpers.DisposeWithin(scheduler);
        int result = await scheduler.Factory.StartNew(async () =>
        {
            await Task.Yield(); // resumed through a post: runs in the loop, inside the carrier task
            return Fib(18);
        }).Unwrap().WaitAsync(TimeSpan.FromSeconds(20));
        result.Should().Be(2584);

        int Fib(int n)
        {
            if (n < 2)
            {
                return n;
            }

            Task<int> left = Task.Factory.StartNew(() => Fib(n - 1), CancellationToken.None, TaskCreationOptions.None, scheduler);
            int right = Fib(n - 2);
            return left.Result + right;
        }
    }

    [Fact]
    public async Task A_user_context_set_inside_a_task_gets_that_tasks_awaits_and_the_worker_context_is_back_for_the_next_item()
    {
        var scheduler = Create(1);
        await using var disposeScheduler = SchedulerTestHelpers.DisposeWithin(scheduler);
        SynchronizationContext workerContext = await ContextOf(scheduler).WaitAsync(Bound);
        var user = new Scheduler.Tests.Sources.RecordingSynchronizationContext();

        // A synchronous task that installs a context and leaves it there.
        await scheduler.Factory.StartNew(() => SynchronizationContext.SetSynchronizationContext(user)).WaitAsync(Bound);
        (await scheduler.Factory.StartNew(() => SynchronizationContext.Current).WaitAsync(Bound)).Should().BeSameAs(workerContext, "the next task sees the worker's context again");
        var viaPost = new TaskCompletionSource<SynchronizationContext?>(TaskCreationOptions.RunContinuationsAsynchronously);
        workerContext.Post(_ => viaPost.SetResult(SynchronizationContext.Current), null);
        (await viaPost.Task.WaitAsync(Bound)).Should().BeSameAs(workerContext, "and so does the next post");

        // An async task that installs a context: its awaits go to that context, not to the worker's.
        int postsBefore = user.Posts;
        (bool YieldUnderUser, bool PooledUnderUser) seen = await scheduler.Factory.StartNew(async () =>
        {
            SynchronizationContext.SetSynchronizationContext(user);
            await Task.Yield();
            bool yieldUnderUser = SynchronizationContext.Current == user && !scheduler.IsWorkerThread;
            var waker = new Scheduler.Tests.Sources.TestWaker<int>();
            short version = waker.Version;
            new Thread(() =>
            {
                waker.WaitForRegistration(); // the await went asynchronous first
                waker.Core.TrySetResult(version, 1);
            }).Start();
            await waker.Task;
            bool pooledUnderUser = SynchronizationContext.Current == user && !scheduler.IsWorkerThread;
            return (yieldUnderUser, pooledUnderUser);
        }).Unwrap().WaitAsync(Bound);
        seen.YieldUnderUser.Should().BeTrue();
        seen.PooledUnderUser.Should().BeTrue("a waker honours the context captured by the await (UseSchedulingContext)");
        user.Posts.Should().BeGreaterThanOrEqualTo(postsBefore + 2);
        (await scheduler.Factory.StartNew(() => SynchronizationContext.Current).WaitAsync(Bound)).Should().BeSameAs(workerContext);
    }

    [Fact]
    public async Task A_task_that_posts_and_then_blocks_for_its_post_is_unblocked_by_the_peer_worker()
    {
        // A post from a worker lands in its private LIFO slot; docs/scheduling.md: a task sitting there waits for the
        // current task "unless that task blocks or runs long, when a watchdog moves it to the global queue".
        var scheduler = Create(2);
        await using var disposeScheduler = SchedulerTestHelpers.DisposeWithin(scheduler);
        for (int round = 0; round < 3; round++)
        {
            (bool Signalled, bool RanOnWorker) result = await scheduler.Factory.StartNew(() =>
            {
                using var ran = new ManualResetEventSlim();
                bool onWorker = false;
                SynchronizationContext.Current!.Post(_ =>
                {
                    onWorker = scheduler.IsWorkerThread;
                    ran.Set();
                }, null);
                bool signalled = ran.Wait(Bound);
                return (signalled, onWorker);
            }).WaitAsync(TimeSpan.FromSeconds(15));
            result.Signalled.Should().BeTrue("round {0}: the peer takes the blocked worker's post", round);
            result.RanOnWorker.Should().BeTrue();
        }
    }

    [Fact]
    public async Task A_post_chain_running_when_Dispose_is_called_runs_to_its_end_before_DisposeAsync_completes()
    {
        // Dispose: "run everything already queued (and what that work queues while it drains), then join the workers".
        var scheduler = Create(2);
        const int Length = 20_000;
        int ran = 0;
        var started = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        await scheduler.Factory.StartNew(() =>
        {
            SynchronizationContext context = SynchronizationContext.Current!;
            SendOrPostCallback? step = null;
            step = _ =>
            {
                int n = Interlocked.Increment(ref ran);
                if (n == 100)
                {
                    started.SetResult();
                }

                if (n < Length)
                {
                    context.Post(step!, null);
                }
            };
            context.Post(step, null);
        }).WaitAsync(Bound);

        await started.Task.WaitAsync(Bound);
        await scheduler.DisposeAsync().AsTask().WaitAsync(Bound);
        Volatile.Read(ref ran).Should().Be(Length, "the chain queued while draining ran before the workers exited");
    }

    [Fact]
    public async Task Send_after_the_workers_exited_rethrows_the_callbacks_exception_to_the_caller_and_a_throwing_late_post_is_raised_as_unhandled()
    {
        UnhandledExceptions.EnsureInstalled();
        var scheduler = Create(1);
        SynchronizationContext context = await ContextOf(scheduler).WaitAsync(Bound);
        await scheduler.DisposeAsync().AsTask().WaitAsync(Bound);

        var sent = new InvalidOperationException("thrown by a late Send");
        Action send = () => context.Send(_ => throw sent, null);
        send.Should().Throw<InvalidOperationException>().Which.Should().BeSameAs(sent, "Send reports the callback's exception to its caller, wherever the callback ran");

        var posted = new DeliberatePostException("thrown by a late post");
        context.Post(_ => throw posted, null);
        SpinWait.SpinUntil(() => UnhandledExceptions.Contains(posted), Bound).Should().BeTrue("a late post that throws surfaces as unhandled, as on a worker");
    }

    [Fact]
    public async Task Code_that_installs_the_worker_context_on_a_foreign_thread_is_brought_to_the_workers_by_its_awaits()
    {
        var scheduler = Create(2);
        await using var disposeScheduler = SchedulerTestHelpers.DisposeWithin(scheduler);
        SynchronizationContext context = await ContextOf(scheduler).WaitAsync(Bound);

        (await OnForeignThreadUnder(context, async () =>
        {
            await Task.Yield(); // posted from a thread that is no worker
            return scheduler.IsWorkerThread;
        })).Should().BeTrue("a yield posted from a thread that is no worker goes to the scheduler");

        (await OnForeignThreadUnder(context, async () =>
        {
            var waker = new Scheduler.Tests.Sources.TestWaker<int>();
            short version = waker.Version;
            new Thread(() =>
            {
                waker.WaitForRegistration();
                waker.Core.TrySetResult(version, 1);
            }).Start();
            await waker.Task; // captured on a thread that is no worker, under the scheduler's context
            return scheduler.IsWorkerThread;
        })).Should().BeTrue("a waker awaited under the scheduler's context off its workers resumes on a worker");

        (await OnForeignThreadUnder(context, async () =>
        {
            await Task.Delay(1);
            return scheduler.IsWorkerThread;
        })).Should().BeTrue();

        static async Task<bool> OnForeignThreadUnder(SynchronizationContext context, Func<Task<bool>> body)
        {
            Task<bool>? started = null;
            var thread = new Thread(() =>
            {
                SynchronizationContext.SetSynchronizationContext(context);
                started = body();
            });
            thread.Start();
            thread.Join(Bound).Should().BeTrue();
            return await started!.WaitAsync(Bound);
        }
    }

    [Fact]
    public async Task A_post_that_sets_an_AsyncLocal_and_a_foreign_context_leaves_neither_to_the_next_post_in_context_mode()
    {
        var scheduler = Create(1);
        await using var disposeScheduler = SchedulerTestHelpers.DisposeWithin(scheduler);
        SynchronizationContext context = await ContextOf(scheduler).WaitAsync(Bound);
        var seen = new TaskCompletionSource<(string? Local, SynchronizationContext? Context)>(TaskCreationOptions.RunContinuationsAsynchronously);
        using (ExecutionContext.SuppressFlow())
        {
            context.Post(_ =>
            {
                s_local.Value = "leaked";
                SynchronizationContext.SetSynchronizationContext(new SynchronizationContext());
            }, null);
            context.Post(_ => seen.SetResult((s_local.Value, SynchronizationContext.Current)), null);
        }

        (string? local, SynchronizationContext? current) = await seen.Task.WaitAsync(Bound);
        local.Should().BeNull();
        current.Should().BeSameAs(context);
    }

    [Fact]
    public async Task A_TaskScheduler_made_from_the_worker_context_runs_blocking_fork_join_on_one_worker_each_task_once()
    {
        // TaskScheduler.FromCurrentSynchronizationContext() on a worker wraps the context: its tasks travel as posts, and
        // a blocking wait on one inlines it (the wrapper inlines when the context is current). The posted entry of an
        // inlined task must then be a no-op, not a second run.
        var scheduler = Create(1);
        await using var disposeScheduler = SchedulerTestHelpers.DisposeWithin(scheduler);
        int calls = 0;
        (int Result, int OffWorker) outcome = await scheduler.Factory.StartNew(() =>
        {
            TaskScheduler viaContext = TaskScheduler.FromCurrentSynchronizationContext();
            int offWorker = 0;
            int result = Task.Factory.StartNew(() => Fib(15), CancellationToken.None, TaskCreationOptions.None, viaContext).Result;
            return (result, offWorker);

            int Fib(int n)
            {
                Interlocked.Increment(ref calls);
                if (!scheduler.IsWorkerThread)
                {
                    Interlocked.Increment(ref offWorker);
                }

                if (n < 2)
                {
                    return n;
                }

                Task<int> left = Task.Factory.StartNew(() => Fib(n - 1), CancellationToken.None, TaskCreationOptions.None, viaContext);
                int right = Fib(n - 2);
                return left.Result + right;
            }
        }).WaitAsync(TimeSpan.FromSeconds(20));

        outcome.Result.Should().Be(610);
        outcome.OffWorker.Should().Be(0);
        await Task.Delay(50); // the stale posted entries of inlined tasks run (as no-ops) meanwhile
        (await scheduler.Factory.StartNew(() => scheduler.IsWorkerThread).WaitAsync(Bound)).Should().BeTrue();
        Volatile.Read(ref calls).Should().Be(1973, "fib(15) makes 2 * fib(16) - 1 calls: no task ran twice");
    }

    [Fact]
    public async Task A_BackgroundWorker_created_on_a_worker_reports_progress_and_completion_on_the_workers()
    {
        var scheduler = Create(2);
        await using var disposeScheduler = SchedulerTestHelpers.DisposeWithin(scheduler);
        var completed = new TaskCompletionSource<(bool OnWorker, object? Result, Exception? Error)>(TaskCreationOptions.RunContinuationsAsynchronously);
        int progressOffWorker = 0, progressCount = 0;

        await scheduler.Factory.StartNew(() =>
        {
            var worker = new System.ComponentModel.BackgroundWorker { WorkerReportsProgress = true };
            worker.DoWork += (_, e) =>
            {
                for (int i = 1; i <= 10; i++)
                {
                    ((System.ComponentModel.BackgroundWorker)_!).ReportProgress(i * 10);
                }

                e.Result = 42;
            };
            worker.ProgressChanged += (_, _) =>
            {
                Interlocked.Increment(ref progressCount);
                if (!scheduler.IsWorkerThread)
                {
                    Interlocked.Increment(ref progressOffWorker);
                }
            };
            worker.RunWorkerCompleted += (_, e) => completed.SetResult((scheduler.IsWorkerThread, e.Error is null ? e.Result : null, e.Error));
            worker.RunWorkerAsync();
        }).WaitAsync(Bound);

        (bool onWorker, object? result, Exception? error) = await completed.Task.WaitAsync(Bound);
        error.Should().BeNull();
        result.Should().Be(42);
        onWorker.Should().BeTrue("the completion is posted to the context captured where the BackgroundWorker started");
        await SchedulerTestHelpers.WaitUntilAsync(() => Volatile.Read(ref progressCount) == 10);
        progressCount.Should().Be(10);
        progressOffWorker.Should().Be(0);
    }

    [Fact]
    public async Task Tasks_run_synchronously_from_outside_or_inlined_by_a_wait_on_a_worker_see_the_worker_context()
    {
        var scheduler = Create(1);
        await using var disposeScheduler = SchedulerTestHelpers.DisposeWithin(scheduler);
        SynchronizationContext context = await ContextOf(scheduler).WaitAsync(Bound);

        // RunSynchronously from a thread that is no worker: never run there (it would break IsWorkerThread), so it is
        // queued and the caller waits.
        (bool OnWorker, SynchronizationContext? Context) fromOutside = await Task.Run(() =>
        {
            var task = new Task<(bool, SynchronizationContext?)>(() => (scheduler.IsWorkerThread, SynchronizationContext.Current));
            task.RunSynchronously(scheduler);
            return task.Result;
        }).WaitAsync(Bound);
        fromOutside.OnWorker.Should().BeTrue();
        fromOutside.Context.Should().BeSameAs(context);

        // A task inlined by a blocking wait on the only worker.
        (bool Inlined, SynchronizationContext? Context, bool AfterWaitContextIsOurs) inlined = await scheduler.Factory.StartNew(() =>
        {
            int thread = Environment.CurrentManagedThreadId;
            Task<(int, SynchronizationContext?)> child = Task.Factory.StartNew(
                () => (Environment.CurrentManagedThreadId, SynchronizationContext.Current), CancellationToken.None, TaskCreationOptions.None, scheduler);
            (int ranOn, SynchronizationContext? seen) = child.Result;
            return (ranOn == thread, seen, SynchronizationContext.Current == context);
        }).WaitAsync(Bound);
        inlined.Inlined.Should().BeTrue("one worker: the wait inlines the child");
        inlined.Context.Should().BeSameAs(context);
        inlined.AfterWaitContextIsOurs.Should().BeTrue();
    }
}
