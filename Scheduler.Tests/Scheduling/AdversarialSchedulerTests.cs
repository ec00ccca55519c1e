using System.Collections.Concurrent;
using System.Diagnostics;
using System.Runtime.CompilerServices;
using System.Threading.Channels;
using Scheduler.Sources;
using Xunit.Abstractions;

namespace Scheduler.Tests.Scheduling;

/// <summary>
/// Adversarial scenarios for the scheduler and its wakers: shutdown racing producers of every kind, inlining across
/// schedulers and from several waiters, the synchronization context's Send/Post under Dispose, late completions of
/// awaits whose workers are gone, and the debugger view under concurrent queueing. Every wait is bounded.
/// </summary>
public sealed class AdversarialSchedulerTests(ITestOutputHelper output)
{
    private static readonly TimeSpan Bound = TimeSpan.FromSeconds(10);

    [Fact]
    public async Task A_channel_read_awaited_on_the_scheduler_resumes_when_a_foreign_thread_writes_after_Dispose()
    {
        // docs/scheduling.md, "nothing lost": a continuation that arrives after every worker exited runs on the
        // ThreadPool, an await resuming from an I/O or timer thread included. A Channel read is a ValueTask backed by an
        // IValueTaskSource: the runtime queues its continuation with StartNew(..., DenyChildAttach, scheduler), not as
        // the plain continuation task that IsAwaitResumption recognises.
        var scheduler = SchedulerTestHelpers.Create(2);
        Channel<int> channel = Channel.CreateUnbounded<int>();
        var suspended = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);

        Task<int> reader = scheduler.Factory.StartNew(async () =>
        {
            ValueTask<int> read = channel.Reader.ReadAsync();
            suspended.SetResult();
            return await read + 1;
        }).Unwrap();

        await suspended.Task.WaitAsync(Bound);
        await Task.Delay(20); // let the await register its continuation
        await scheduler.DisposeAsync().AsTask().WaitAsync(Bound);
        scheduler.IsTerminated.Should().BeTrue();

        Exception? writeFailure = null;
        try
        {
            channel.Writer.TryWrite(41).Should().BeTrue();
        }
        catch (Exception e)
        {
            writeFailure = e;
        }

        writeFailure.Should().BeNull("a writer on a foreign thread must never get the disposed scheduler's refusal");
        (await reader.WaitAsync(Bound)).Should().Be(42, "the awaiting method must resume (on the ThreadPool), not be lost");
    }

    [Fact]
    public async Task An_await_of_a_ManualResetValueTaskSourceCore_source_resumes_when_completed_by_a_foreign_thread_after_Dispose()
    {
        // The same shape as the channel's, through the BCL's own core: any IValueTaskSource built on
        // ManualResetValueTaskSourceCore (or shaped like it: sockets, channels) queues the continuation with
        // StartNew(continuation, state, DenyChildAttach, TaskScheduler.Current).
        var scheduler = SchedulerTestHelpers.Create(2);
        var source = new CoreBackedSource();
        var suspended = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);

        Task<int> awaiting = scheduler.Factory.StartNew(async () =>
        {
            ValueTask<int> pending = new(source, source.Version);
            suspended.SetResult();
            return await pending;
        }).Unwrap();

        await suspended.Task.WaitAsync(Bound);
        await Task.Delay(20);
        await scheduler.DisposeAsync().AsTask().WaitAsync(Bound);

        Action complete = () => source.SetResult(7);
        complete.Should().NotThrow("the completing thread (I/O, timer) must never get the disposed scheduler's refusal");
        (await awaiting.WaitAsync(Bound)).Should().Be(7);
    }

    [Fact]
    public async Task Dispose_racing_a_StartNew_storm_runs_every_accepted_task_exactly_once_and_refuses_the_rest()
    {
        var scheduler = SchedulerTestHelpers.Create(2);
        const int MaxIds = 1_000_000;
        var runs = new int[MaxIds];
        int nextId = -1;
        int refused = 0;
        var unexpected = new ConcurrentQueue<Exception>();
        var accepted = new ConcurrentQueue<Task>();
        var refusedIds = new ConcurrentQueue<int>();
        var disposeRequested = new ManualResetEventSlim();

        Task Spawn(Action<int> body, TaskCreationOptions options = TaskCreationOptions.None)
        {
            int id = Interlocked.Increment(ref nextId);
            Task task;
            try
            {
                task = Task.Factory.StartNew(() => body(id), CancellationToken.None, options, scheduler);
            }
            catch (TaskSchedulerException)
            {
                refusedIds.Enqueue(id);
                throw;
            }

            accepted.Enqueue(task);
            return task;
        }

        void Run(int id) => Interlocked.Increment(ref runs[id]);

        // Worker-side spawn trees: a worker's spawns are never refused, also during shutdown.
        void Tree(int id, int depth)
        {
            Run(id);
            if (depth > 0)
            {
                Spawn(child => Tree(child, depth - 1));
                Spawn(child => Tree(child, depth - 1));
            }
        }

        // A LongRunning task of the scheduler keeps spawning on its dedicated thread across the Dispose.
        _ = Spawn(
            id =>
            {
                Run(id);
                var until = DateTime.UtcNow.AddMilliseconds(150);
                disposeRequested.Wait(Bound);
                while (DateTime.UtcNow < until)
                {
                    Spawn(Run);
                    Thread.Sleep(1);
                }
            },
            TaskCreationOptions.LongRunning);

        // Outside producers: each StartNew either returns a task that runs exactly once, or throws the documented refusal.
        Thread[] producers = Enumerable.Range(0, 3).Select(p => new Thread(() =>
        {
            int refusalsSeen = 0;
            var until = DateTime.UtcNow.AddSeconds(3);
            for (int i = 0; refusalsSeen < 50 && DateTime.UtcNow < until; i++)
            {
                if (i % 50 == 49)
                {
                    Thread.Sleep(1); // paced: at most ~50 per millisecond per producer, so the ids stay within the array
                }

                try
                {
                    if (i % 200 == 0)
                    {
                        Spawn(id => Tree(id, 5));
                    }
                    else
                    {
                        Spawn(Run);
                    }
                }
                catch (TaskSchedulerException e) when (e.InnerException is ObjectDisposedException)
                {
                    refusalsSeen++;
                    Interlocked.Increment(ref refused);
                }
                catch (Exception e)
                {
                    unexpected.Enqueue(e);
                    return;
                }
            }
        })
        { IsBackground = true, Name = $"storm producer {p}" }).ToArray();

        foreach (Thread producer in producers)
        {
            producer.Start();
        }

        await Task.Delay(30);

        // A task of the scheduler disposes it from a worker (does not wait), while the test thread disposes it too.
        _ = Spawn(id =>
        {
            Run(id);
            scheduler.Dispose();
            disposeRequested.Set();
        });
        Task disposing = Task.Run(async () =>
        {
            Thread.Sleep(5);
            ValueTask disposal = scheduler.DisposeAsync();
            disposeRequested.Set();
            await disposal;
        });

        await disposing.WaitAsync(Bound);
        foreach (Thread producer in producers)
        {
            producer.Join(Bound).Should().BeTrue("a producer must not hang");
        }

        await Task.WhenAll(accepted).WaitAsync(Bound);
        unexpected.Should().BeEmpty();
        refused.Should().BeGreaterThan(0, "the producers ran until they saw refusals");
        int lastId = Volatile.Read(ref nextId);
        lastId.Should().BeLessThan(MaxIds);

        // Every accepted task ran exactly once; accepted tasks are exactly the ids that returned a task.
        var acceptedCount = accepted.Count;
        int ranOnce = 0;
        for (int i = 0; i <= lastId; i++)
        {
            runs[i].Should().BeLessThanOrEqualTo(1, $"task {i} ran {runs[i]} times");
            ranOnce += runs[i];
        }

        ranOnce.Should().Be(acceptedCount, "every accepted task ran, and only those");
        refusedIds.Should().OnlyContain(id => runs[id] == 0, "a refused task never runs");
        (acceptedCount + refusedIds.Count).Should().Be(lastId + 1);
        accepted.Should().OnlyContain(t => t.IsCompletedSuccessfully);
        ((Action)(() => scheduler.Factory.StartNew(() => { })))
            .Should().Throw<TaskSchedulerException>().WithInnerException<ObjectDisposedException>();
    }

    [Fact]
    public async Task PipeScheduler_callbacks_racing_Dispose_from_workers_and_foreign_threads_each_run_exactly_once()
    {
        var scheduler = SchedulerTestHelpers.Create(2);
        const int PerProducer = 20_000;
        var runs = new int[4 * PerProducer];
        int done = 0;
        Action<object?> callback = state =>
        {
            Interlocked.Increment(ref runs[(int)state!]);
            Interlocked.Increment(ref done);
        };

        Task[] outside = Enumerable.Range(0, 2).Select(p => Task.Factory.StartNew(
            () =>
            {
                for (int i = 0; i < PerProducer; i++)
                {
                    scheduler.PipeScheduler.Schedule(callback, (p * PerProducer) + i);
                }
            },
            CancellationToken.None,
            TaskCreationOptions.LongRunning,
            TaskScheduler.Default)).ToArray();

        Task[] inside = Enumerable.Range(2, 2).Select(p => scheduler.Factory.StartNew(() =>
        {
            for (int i = 0; i < PerProducer; i++)
            {
                scheduler.PipeScheduler.Schedule(callback, (p * PerProducer) + i);
                if (i == PerProducer / 2 && p == 2)
                {
                    scheduler.Dispose(); // from a worker: returns at once
                }
            }
        })).ToArray();

        await Task.Delay(5);
        await scheduler.DisposeAsync().AsTask().WaitAsync(Bound);
        await Task.WhenAll(outside.Concat(inside)).WaitAsync(Bound);
        await SpinUntilAsync(() => Volatile.Read(ref done) == runs.Length);

        runs.Should().OnlyContain(r => r == 1, "a pipe callback is never refused nor run twice");
    }

    [Fact]
    public async Task Waiting_untimed_on_a_worker_for_a_task_of_another_scheduler_never_runs_it_here()
    {
        // An untimed Wait calls the target's scheduler's TryExecuteTaskInline: b must refuse a's worker, so b's task
        // waits for b's own (busy) worker and then runs there, seeing b as current. b does not compensate for its
        // blocked worker: with the default 100-ms delay, a loaded CI run (session 50) took longer than that between
        // the blocker and the check below, and b's compensating thread had run the task by then.
        var a = Create(1, background: true);
        var b = new WorkStealingTaskScheduler(new WorkStealingTaskSchedulerOptions
        {
            WorkerCount = 1,
            SpinIterations = 30,
            ThreadNamePrefix = "Test",
            BlockingCompensationDelay = Timeout.InfiniteTimeSpan,
        });
        await using var disposeA = SchedulerTestHelpers.DisposeWithin(a, timeout: Bound);
        await using var disposeB = SchedulerTestHelpers.DisposeWithin(b, timeout: Bound);
        using var gate = new ManualResetEventSlim();

        Task blocker = b.Factory.StartNew(() => gate.Wait(Bound)); // b's only worker is busy: its queue holds the next one
        await Task.Delay(10);
        Task<(bool OnB, bool OnA, TaskScheduler Current)> onB = b.Factory.StartNew(() => (b.IsWorkerThread, a.IsWorkerThread, TaskScheduler.Current));

        var waiting = new ManualResetEventSlim();
        Task waiter = a.Factory.StartNew(() =>
        {
            waiting.Set();
            onB.Wait();
        });

        waiting.Wait(Bound).Should().BeTrue();
        await Task.Delay(50);
        onB.IsCompleted.Should().BeFalse("a's worker must not run b's task");
        gate.Set();
        var where = await onB.WaitAsync(Bound);
        await waiter.WaitAsync(Bound);
        where.OnB.Should().BeTrue();
        where.OnA.Should().BeFalse();
        where.Current.Should().BeSameAs(b);
        await blocker.WaitAsync(Bound);
        a.GetStatistics().TasksInlined.Should().Be(0);
    }

    [Fact]
    public async Task A_task_waited_on_by_two_workers_and_a_foreign_thread_at_once_runs_exactly_once()
    {
        // Task.Wait inlines only without a timeout (a timed Wait never calls TryExecuteTaskInline), so the workers wait
        // untimed: with all three blocked on the target, only an inline run can complete it. Background workers, so that
        // a hang fails the test (bounded below) without keeping the process alive.
        var scheduler = Create(3, background: true);
        await using var disposeScheduler = SchedulerTestHelpers.DisposeWithin(scheduler, timeout: Bound);
        for (int round = 0; round < 200; round++)
        {
            int ran = 0;
            using var start = new Barrier(4);
            Task? target = null;
            Task creator = scheduler.Factory.StartNew(() =>
            {
                // Queued to this worker's LIFO slot; two peers and a foreign thread wait for it at once.
                target = Task.Factory.StartNew(() => Interlocked.Increment(ref ran), CancellationToken.None, TaskCreationOptions.None, scheduler);
                start.SignalAndWait(Bound);
                target.Wait();
            });
            Task[] waiters = Enumerable.Range(0, 2).Select(_ => scheduler.Factory.StartNew(() =>
            {
                SpinWait.SpinUntil(() => Volatile.Read(ref target) is not null, Bound);
                start.SignalAndWait(Bound);
                Volatile.Read(ref target)!.Wait();
            })).ToArray();
            Task foreign = Task.Factory.StartNew(
                () =>
                {
                    SpinWait.SpinUntil(() => Volatile.Read(ref target) is not null, Bound);
                    start.SignalAndWait(Bound);
                    Volatile.Read(ref target)!.Wait(Bound).Should().BeTrue();
                },
                CancellationToken.None,
                TaskCreationOptions.LongRunning,
                TaskScheduler.Default);
            try
            {
                await Task.WhenAll(waiters.Append(creator).Append(foreign)).WaitAsync(Bound);
            }
            catch (TimeoutException)
            {
                throw new TimeoutException($"round {round}: creator {creator.Status}, waiters {string.Join(",", waiters.Select(w => w.Status))}, target {target?.Status}, ran {ran}, stats {scheduler.GetStatistics()}");
            }

            ran.Should().Be(1, $"round {round}");
        }

        scheduler.GetStatistics().TasksInlined.Should().BeGreaterThan(0, "the waits must have exercised the inline path");
    }

    [Fact]
    public async Task A_deep_chain_of_blocking_Result_waits_completes_without_overflowing_the_stack()
    {
        // Each level spawns the next and blocks on .Result (an untimed wait): every wait inlines the child from the
        // worker's LIFO slot, 1,500 frames of inlining deep on one worker's stack. (A probe of 20,000 levels hung instead:
        // after 5 s one task was queued and both workers blocked, presumably each past the BCL's inlining stack guard.)
        var scheduler = SchedulerTestHelpers.Create(2);
        await using var disposeScheduler = SchedulerTestHelpers.DisposeWithin(scheduler);

        int Level(int depth) => depth == 0
            ? 0
            : 1 + Task.Factory.StartNew(() => Level(depth - 1), CancellationToken.None, TaskCreationOptions.None, scheduler).Result;

        (await scheduler.Factory.StartNew(() => Level(1_500)).WaitAsync(Bound)).Should().Be(1_500);
        scheduler.GetStatistics().TasksInlined.Should().BeGreaterThan(0);
    }

    [Fact]
    public async Task Send_runs_inline_on_a_worker_and_on_a_worker_from_outside_rethrowing_and_still_runs_after_Dispose()
    {
        var scheduler = new WorkStealingTaskScheduler(new WorkStealingTaskSchedulerOptions { WorkerCount = 2, SpinIterations = 30, UseSynchronizationContext = true, ThreadNamePrefix = "Test" });
        try
        {
            (SynchronizationContext Context, bool InlineOnSameThread) probe = await scheduler.Factory.StartNew(() =>
            {
                SynchronizationContext context = SynchronizationContext.Current!;
                int thread = Environment.CurrentManagedThreadId;
                int ranOn = -1;
                context.Send(_ => ranOn = Environment.CurrentManagedThreadId, null);
                return (context, ranOn == thread);
            }).WaitAsync(Bound);
            probe.Context.Should().NotBeNull();
            probe.InlineOnSameThread.Should().BeTrue("Send on a worker runs the callback inline");

            bool onWorker = false;
            await Task.Run(() => probe.Context.Send(_ => onWorker = scheduler.IsWorkerThread, null)).WaitAsync(Bound);
            onWorker.Should().BeTrue("Send from a foreign thread runs the callback on a worker");

            var boom = new InvalidOperationException("boom");
            Func<Task> throwing = () => Task.Run(() => probe.Context.Send(_ => throw boom, null)).WaitAsync(Bound);
            (await throwing.Should().ThrowAsync<InvalidOperationException>()).Which.Should().BeSameAs(boom);

            await scheduler.DisposeAsync().AsTask().WaitAsync(Bound);
            int afterDispose = 0;
            await Task.Run(() => probe.Context.Send(_ => afterDispose++, null)).WaitAsync(Bound);
            afterDispose.Should().Be(1, "a Send after Dispose is a continuation of work in flight: it runs (on the ThreadPool)");

            var posted = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            probe.Context.Post(_ => posted.SetResult(), null);
            await posted.Task.WaitAsync(Bound);
        }
        finally
        {
            await scheduler.DisposeAsync().AsTask().WaitAsync(Bound);
        }
    }

    [Fact]
    public async Task In_context_mode_an_await_resuming_after_Dispose_completes_its_method()
    {
        var scheduler = new WorkStealingTaskScheduler(new WorkStealingTaskSchedulerOptions { WorkerCount = 2, SpinIterations = 30, UseSynchronizationContext = true, ThreadNamePrefix = "Test" });
        var release = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        Channel<int> channel = Channel.CreateUnbounded<int>();
        var started = new CountdownEvent(2);

        Task<int> viaTask = scheduler.Factory.StartNew(async () =>
        {
            started.Signal();
            await release.Task;
            await Task.Yield();
            return 1;
        }).Unwrap();
        Task<int> viaChannel = scheduler.Factory.StartNew(async () =>
        {
            ValueTask<int> read = channel.Reader.ReadAsync();
            started.Signal();
            int value = await read;
            await Task.Yield();
            return value;
        }).Unwrap();

        started.Wait(Bound).Should().BeTrue();
        await Task.Delay(20);
        await scheduler.DisposeAsync().AsTask().WaitAsync(Bound);
        release.SetResult();
        channel.Writer.TryWrite(2).Should().BeTrue();
        (await viaTask.WaitAsync(Bound)).Should().Be(1);
        (await viaChannel.WaitAsync(Bound)).Should().Be(2);
    }

    [Fact]
    public async Task Wakers_completed_while_their_workers_scheduler_is_disposed_resume_exactly_once()
    {
        for (int round = 0; round < 40; round++)
        {
            var scheduler = SchedulerTestHelpers.Create(2, spin: round % 2 == 0 ? 0 : 30);
            const int Awaiters = 8;
            var sources = new PooledValueTaskSource<int>[Awaiters];
            var versions = new short[Awaiters];
            for (int i = 0; i < Awaiters; i++)
            {
                sources[i] = PooledValueTaskSource<int>.Rent();
                versions[i] = sources[i].Version;
            }

            var resumed = new int[Awaiters];
            using var registered = new CountdownEvent(Awaiters);
            Task[] awaiters = Enumerable.Range(0, Awaiters).Select(i => scheduler.Factory.StartNew(async () =>
            {
                ValueTask<int> pending = sources[i].Task;
                registered.Signal();
                int value = await pending;
                value.Should().Be(i);
                Interlocked.Increment(ref resumed[i]);
            }).Unwrap()).ToArray();

            registered.Wait(Bound).Should().BeTrue();
            Thread.Sleep(1);
            using var go = new Barrier(3);
            Task completer = Task.Factory.StartNew(
                () =>
                {
                    go.SignalAndWait(Bound);
                    for (int i = 0; i < Awaiters; i++)
                    {
                        sources[i].TrySetResult(versions[i], i).Should().BeTrue();
                        if (i == Awaiters / 2)
                        {
                            Thread.Yield();
                        }
                    }
                },
                CancellationToken.None,
                TaskCreationOptions.LongRunning,
                TaskScheduler.Default);
            Task disposer = Task.Factory.StartNew(
                () =>
                {
                    go.SignalAndWait(Bound);
                    return scheduler.DisposeAsync().AsTask();
                },
                CancellationToken.None,
                TaskCreationOptions.LongRunning,
                TaskScheduler.Default).Unwrap();
            go.SignalAndWait(Bound);

            await Task.WhenAll(awaiters.Append(completer).Append(disposer)).WaitAsync(Bound);
            resumed.Should().OnlyContain(r => r == 1, $"round {round}");
        }
    }

    [Fact]
    public async Task A_flowed_execution_context_reaches_the_continuation_and_does_not_leak_to_the_workers_next_item()
    {
        var scheduler = SchedulerTestHelpers.Create(1);
        await using var disposeScheduler = SchedulerTestHelpers.DisposeWithin(scheduler);
        var local = new AsyncLocal<string?>();
        PooledValueTaskSource<int> flowing = PooledValueTaskSource<int>.Rent();
        PooledValueTaskSource<int> unsafeOne = PooledValueTaskSource<int>.Rent();
        var seenFlowing = new TaskCompletionSource<string?>(TaskCreationOptions.RunContinuationsAsynchronously);
        var seenUnsafe = new TaskCompletionSource<string?>(TaskCreationOptions.RunContinuationsAsynchronously);
        var seenAfter = new TaskCompletionSource<string?>(TaskCreationOptions.RunContinuationsAsynchronously);

        await scheduler.Factory.StartNew(() =>
        {
            local.Value = "flowed";
            ValueTaskAwaiter<int> a = flowing.Task.GetAwaiter();
            a.OnCompleted(() =>
            {
                _ = a.GetResult();
                seenFlowing.SetResult(local.Value);
            });
            ValueTaskAwaiter<int> b = unsafeOne.Task.GetAwaiter();
            b.UnsafeOnCompleted(() =>
            {
                _ = b.GetResult();
                seenUnsafe.SetResult(local.Value);
            });
        }).WaitAsync(Bound);

        await Task.Run(() => flowing.TrySetResult(1)).WaitAsync(Bound);
        (await seenFlowing.Task.WaitAsync(Bound)).Should().Be("flowed");
        await Task.Run(() => unsafeOne.TrySetResult(2)).WaitAsync(Bound);
        (await seenUnsafe.Task.WaitAsync(Bound)).Should().BeNull("no context was asked for: the worker loop's own runs it");

        // The next item on the same (only) worker must not see the flowed value.
        scheduler.EnqueueToWorker(0, new SchedulerTestHelpers.RecordingWorkItem(() => seenAfter.SetResult(local.Value)));
        (await seenAfter.Task.WaitAsync(Bound)).Should().BeNull();
    }

    [Fact]
    public async Task GetScheduledTasks_under_concurrent_queueing_and_stealing_never_throws_and_lists_only_tasks()
    {
        var scheduler = SchedulerTestHelpers.Create(2, spin: 0);
        await using var disposeScheduler = SchedulerTestHelpers.DisposeWithin(scheduler);
        using var stop = new CancellationTokenSource();
        int completed = 0;

        void Spawner(int depth)
        {
            Interlocked.Increment(ref completed);
            if (depth > 0 && !stop.IsCancellationRequested)
            {
                for (int i = 0; i < 4; i++)
                {
                    _ = Task.Factory.StartNew(() => Spawner(depth - 1), CancellationToken.None, i % 2 == 0 ? TaskCreationOptions.None : TaskCreationOptions.PreferFairness, scheduler);
                }

                scheduler.PipeScheduler.Schedule(static _ => { }, null);
            }
        }

        Task outside = Task.Factory.StartNew(
            () =>
            {
                while (!stop.IsCancellationRequested)
                {
                    _ = scheduler.Factory.StartNew(() => Spawner(3));
                    Thread.Sleep(1);
                }
            },
            CancellationToken.None,
            TaskCreationOptions.LongRunning,
            TaskScheduler.Default);

        int snapshots = 0;
        int maxSeen = 0;
        int duplicateSnapshots = 0;

        // 800 ms of snapshots, and on (bounded) until some overlapped queued work: on a loaded machine the outside
        // producer's thread can start, or this one get its core back, only after the 800 ms are over, and a fixed window
        // could then see one or two snapshots, or none with a task in it.
        var clock = Stopwatch.StartNew();
        while (clock.Elapsed < TimeSpan.FromMilliseconds(800) || ((snapshots <= 2 || maxSeen == 0) && clock.Elapsed < Bound))
        {
            var listed = SchedulerTestHelpers.ScheduledTasks(scheduler);
            listed.Should().NotContainNulls();
            if (listed.Distinct().Count() != listed.Count)
            {
                duplicateSnapshots++;
            }

            maxSeen = Math.Max(maxSeen, listed.Count);
            snapshots++;
        }

        await stop.CancelAsync();
        await outside.WaitAsync(Bound);
        snapshots.Should().BeGreaterThan(2);
        maxSeen.Should().BeGreaterThan(0, "the snapshot must have overlapped queued work");

        // Listed twice: possible while the queues change under the snapshot (a stolen item read at the victim's head and
        // again in the thief's deque). The override documents itself as best effort for a debugger with threads frozen,
        // so this is reported, not asserted.
        output.WriteLine($"{snapshots} snapshots, largest {maxSeen} tasks, {duplicateSnapshots} listed some task twice");
    }

    private sealed class CoreBackedSource : System.Threading.Tasks.Sources.IValueTaskSource<int>
    {
        private System.Threading.Tasks.Sources.ManualResetValueTaskSourceCore<int> _core = new() { RunContinuationsAsynchronously = true };

        public short Version => _core.Version;

        public void SetResult(int value) => _core.SetResult(value);

        public int GetResult(short token) => _core.GetResult(token);

        public System.Threading.Tasks.Sources.ValueTaskSourceStatus GetStatus(short token) => _core.GetStatus(token);

        public void OnCompleted(Action<object?> continuation, object? state, short token, System.Threading.Tasks.Sources.ValueTaskSourceOnCompletedFlags flags) =>
            _core.OnCompleted(continuation, state, token, flags);
    }

    private static WorkStealingTaskScheduler Create(int workers, bool background) =>
        new(new WorkStealingTaskSchedulerOptions { WorkerCount = workers, SpinIterations = 30, UseBackgroundThreads = background, ThreadNamePrefix = "Test" });

    private static async Task SpinUntilAsync(Func<bool> condition)
    {
        var deadline = DateTime.UtcNow + Bound;
        while (!condition() && DateTime.UtcNow < deadline)
        {
            await Task.Delay(1);
        }
    }
}
