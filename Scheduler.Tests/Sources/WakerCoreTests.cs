using System.Runtime.CompilerServices;
using System.Threading.Tasks.Sources;
using Scheduler.Sources;
using Scheduler.Tests.Scheduling;

namespace Scheduler.Tests.Sources;

public sealed class WakerCoreTests
{
    [Fact]
    public async Task Completed_before_await_returns_result_synchronously()
    {
        var waker = new TestWaker<int>();
        waker.Core.SetResult(42);

        ValueTask<int> task = waker.Task;
        task.IsCompletedSuccessfully.Should().BeTrue();
        (await task).Should().Be(42);
        waker.Registrations.Should().Be(0);
    }

    [Fact]
    public async Task Completion_from_another_thread_resumes_awaiter_with_result()
    {
        var waker = new TestWaker<string>();
        var completer = new Thread(() =>
        {
            waker.WaitForRegistration();
            waker.Core.SetResult("done");
        });
        completer.Start();

        string result = await waker.Task;
        result.Should().Be("done");
        completer.Join();
    }

    [Fact]
    public void Status_reports_pending_succeeded_faulted_and_canceled()
    {
        var waker = new TestWaker<int>();
        short token = waker.Version;
        waker.Core.GetStatus(token).Should().Be(ValueTaskSourceStatus.Pending);
        waker.Core.SetResult(1);
        waker.Core.GetStatus(token).Should().Be(ValueTaskSourceStatus.Succeeded);

        waker.Core.Reset();
        token = waker.Version;
        waker.Core.SetException(new InvalidTimeZoneException());
        waker.Core.GetStatus(token).Should().Be(ValueTaskSourceStatus.Faulted);

        waker.Core.Reset();
        token = waker.Version;
        waker.Core.SetCanceled();
        waker.Core.GetStatus(token).Should().Be(ValueTaskSourceStatus.Canceled);
    }

    [Fact]
    public void Exception_is_rethrown_as_the_same_instance()
    {
        var waker = new TestWaker<int>();
        var error = new InvalidTimeZoneException("boom");
        waker.Core.SetException(error);

        Action read = () => waker.Core.GetResult(waker.Version);
        read.Should().Throw<InvalidTimeZoneException>().Which.Should().BeSameAs(error);
    }

    [Fact]
    public void Cancellation_carries_the_token()
    {
        using var cts = new CancellationTokenSource();
        cts.Cancel();
        var waker = new TestWaker<int>();
        waker.Core.TrySetCanceled(cts.Token).Should().BeTrue();

        Action read = () => waker.Core.GetResult(waker.Version);
        read.Should().Throw<OperationCanceledException>().Which.CancellationToken.Should().Be(cts.Token);
    }

    [Fact]
    public void Only_the_first_completion_wins()
    {
        var waker = new TestWaker<int>();
        waker.Core.TrySetResult(1).Should().BeTrue();
        waker.Core.TrySetResult(2).Should().BeFalse();
        waker.Core.TrySetException(new InvalidOperationException()).Should().BeFalse();
        waker.Core.TrySetCanceled().Should().BeFalse();

        // Each strict form says why it refused, by the same text (a Stryker survivor of session 53: no test read it).
        const string AlreadyCompleted = "The operation has already been completed.";
        Action set = () => waker.Core.SetResult(3);
        set.Should().Throw<InvalidOperationException>().WithMessage(AlreadyCompleted);
        Action setException = () => waker.Core.SetException(new InvalidOperationException());
        setException.Should().Throw<InvalidOperationException>().WithMessage(AlreadyCompleted);
        Action setCanceled = () => waker.Core.SetCanceled();
        setCanceled.Should().Throw<InvalidOperationException>().WithMessage(AlreadyCompleted);
        waker.Core.GetResult(waker.Version).Should().Be(1);
    }

    [Fact]
    public void Stale_version_fails_and_leaves_the_next_operation_untouched()
    {
        var waker = new TestWaker<int>();
        short first = waker.Version;
        waker.Core.TrySetResult(first, 1).Should().BeTrue();
        waker.Core.GetResult(first).Should().Be(1);
        waker.Core.TryReset(first).Should().BeTrue();

        short second = waker.Version;
        second.Should().NotBe(first);
        waker.Core.TrySetResult(first, 99).Should().BeFalse();
        waker.Core.TrySetException(first, new InvalidOperationException()).Should().BeFalse();
        waker.Core.TrySetCanceled(first).Should().BeFalse();
        waker.Core.GetStatus(second).Should().Be(ValueTaskSourceStatus.Pending);

        waker.Core.TrySetResult(second, 2).Should().BeTrue();
        waker.Core.GetResult(second).Should().Be(2);
    }

    [Fact]
    public void Stale_token_and_early_result_throw_InvalidOperationException()
    {
        var waker = new TestWaker<int>();
        short token = waker.Version;

        Action early = () => waker.Core.GetResult(token);
        early.Should().Throw<InvalidOperationException>();

        // A wrong token reports a fault (GetStatus never throws: the BCL's AsTask callback calls it outside its try),
        // and reading it throws.
        waker.Core.GetStatus((short)(token + 1)).Should().Be(ValueTaskSourceStatus.Faulted);
        Action wrongToken = () => waker.Core.GetResult((short)(token + 1));
        wrongToken.Should().Throw<InvalidOperationException>();

        waker.Core.SetResult(5);
        waker.Core.TryReset(token).Should().BeTrue();
        waker.Core.TryReset(token).Should().BeFalse("only one caller may reset a completed operation");

        Action stale = () => waker.Core.GetResult(token);
        stale.Should().Throw<InvalidOperationException>();
    }

    [Fact]
    public void TryReset_refuses_a_pending_operation()
    {
        var waker = new TestWaker<int>();
        short token = waker.Version;
        waker.Core.TryReset(token).Should().BeFalse();
        waker.Version.Should().Be(token);
    }

    [Fact]
    public void Version_wraps_after_65536_resets()
    {
        var waker = new TestWaker<int>();
        short start = waker.Version;
        for (int i = 0; i < 65_536; i++)
        {
            waker.Core.Reset();
        }

        waker.Version.Should().Be(start, "the token is 16 bits: a stale token matches again after 65,536 reuses");
    }

    [Fact]
    public async Task Second_registration_runs_on_its_own_and_its_read_throws()
    {
        // A losing registration must not throw out of OnCompleted: an await's builder would rethrow that on the ThreadPool
        // and the awaiting method would never resume. Its continuation is queued on its own; its read throws there.
        var waker = new TestWaker<int>();
        short token = waker.Version;
        var firstRan = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        waker.Core.OnCompleted(static s => ((TaskCompletionSource)s!).SetResult(), firstRan, token, ValueTaskSourceOnCompletedFlags.None);

        var secondRead = new TaskCompletionSource<Exception?>(TaskCreationOptions.RunContinuationsAsynchronously);
        Action again = () => waker.Core.OnCompleted(
            _ =>
            {
                try
                {
                    waker.Core.GetResult(token);
                    secondRead.SetResult(null);
                }
                catch (Exception e)
                {
                    secondRead.SetResult(e);
                }
            },
            null,
            token,
            ValueTaskSourceOnCompletedFlags.None);
        again.Should().NotThrow();
        (await secondRead.Task.WaitAsync(TimeSpan.FromSeconds(10))).Should().BeOfType<InvalidOperationException>("the operation is awaited twice");
        firstRan.Task.IsCompleted.Should().BeFalse("the first registration stays, untouched, until the operation completes");

        waker.Core.TrySetResult(1).Should().BeTrue();
        await firstRan.Task.WaitAsync(TimeSpan.FromSeconds(10));
    }

    [Fact]
    public void Bad_arguments_throw_conventional_exceptions()
    {
        var waker = new TestWaker<int>();
        // Each names the caller's own parameter, and says what to do instead (session 53's Stryker run: without the
        // core's own null check on the exception, ExceptionDispatchInfo.Capture threw for its "source", and no test
        // read a name or a message).
        Action nullContinuation = () => waker.Core.OnCompleted(null!, null, waker.Version, ValueTaskSourceOnCompletedFlags.None);
        nullContinuation.Should().Throw<ArgumentNullException>().WithParameterName("continuation");

        Action nullError = () => waker.Core.TrySetException(null!);
        nullError.Should().Throw<ArgumentNullException>().WithParameterName("error");
        Action nullVersionedError = () => waker.Core.TrySetException(waker.Version, null!);
        nullVersionedError.Should().Throw<ArgumentNullException>().WithParameterName("error");
        waker.Core.GetStatus(waker.Version).Should().Be(ValueTaskSourceStatus.Pending, "a refused completion leaves the operation pending");

        Action nullOwner = () => _ = new WakerCore<int>(null!);
        nullOwner.Should().Throw<ArgumentNullException>().WithParameterName("workItem");

        Action taskOwner = () => _ = new WakerCore<int>(new TaskWorkItem());
        taskOwner.Should().Throw<ArgumentException>().WithParameterName("workItem")
            .WithMessage("A Task cannot serve as the work item of a WakerCore; use the object that embeds the core.*");

        Action invokeWithout = () => waker.Core.InvokeContinuation();
        invokeWithout.Should().Throw<InvalidOperationException>().WithMessage("No continuation is due: *");
    }

    [Fact]
    public async Task Registration_after_completion_still_queues_and_never_inlines()
    {
        var waker = new TestWaker<int>();
        short token = waker.Version;
        waker.Core.SetResult(7);

        var ran = new TaskCompletionSource<bool>(TaskCreationOptions.RunContinuationsAsynchronously);
        bool returned = false;
        Thread caller = Thread.CurrentThread;

        // Inline would mean: on the calling thread while OnCompleted is still running. Another thread may run it
        // before OnCompleted returns (it was queued), the calling thread only afterwards.
        waker.Core.OnCompleted(_ => ran.SetResult(Thread.CurrentThread != caller || Volatile.Read(ref returned)), null, token, ValueTaskSourceOnCompletedFlags.None);
        Volatile.Write(ref returned, true);

        (await ran.Task.WaitAsync(TimeSpan.FromSeconds(10))).Should().BeTrue("the continuation must be queued, never invoked inside OnCompleted");
    }

    [Fact]
    public async Task Default_core_without_work_item_still_dispatches()
    {
        var source = new DetachedSource();
        var completer = new Thread(() =>
        {
            SpinWait.SpinUntil(() => source.Registered);
            source.Core.SetResult(11);
        });
        completer.Start();

        int result = await new ValueTask<int>(source, source.Core.Version);
        result.Should().Be(11);
        source.Core.WorkItem.Should().BeNull();
        completer.Join();
    }

    [Fact]
    public async Task Continuation_never_runs_on_the_completing_thread_without_scheduler()
    {
        // Task.Run: no SynchronizationContext (xunit installs one on test methods), so the ThreadPool path is used.
        await Task.Run(async () =>
        {
            for (int i = 0; i < 200; i++)
            {
                var waker = new TestWaker<int>();
                Thread? completerThread = null;
                var completer = new Thread(() =>
                {
                    waker.WaitForRegistration();
                    completerThread = Thread.CurrentThread;
                    waker.Core.SetResult(i);
                });
                completer.Start();

                await waker.Task;
                Thread.CurrentThread.Should().NotBeSameAs(completerThread);
                Thread.CurrentThread.IsThreadPoolThread.Should().BeTrue();
                completer.Join();
            }
        });
    }

    [Fact]
    public async Task Continuation_runs_on_the_awaiting_worker_when_completed_by_a_foreign_thread()
    {
        var scheduler = new WorkStealingTaskScheduler(2);
        await using var disposeScheduler = SchedulerTestHelpers.DisposeWithin(scheduler);
        using var blockers = new WorkerBlockers(scheduler, 1);

        for (int i = 0; i < 50; i++)
        {
            var waker = new TestWaker<int>();
            Thread? completerThread = null;
            var completer = new Thread(() =>
            {
                waker.WaitForRegistration();
                completerThread = Thread.CurrentThread;
                waker.Core.SetResult(1);
            });
            completer.Start();

            var (before, after, index, onWorker) = await scheduler.Factory.StartNew(async () =>
            {
                Thread beforeThread = Thread.CurrentThread;
                scheduler.TryGetCurrentWorkerIndex(out int beforeIndex);
                await waker.Task;
                scheduler.TryGetCurrentWorkerIndex(out int afterIndex);
                return (beforeThread, Thread.CurrentThread, afterIndex == beforeIndex ? afterIndex : -1, scheduler.IsWorkerThread);
            }).Unwrap();

            completer.Join();
            onWorker.Should().BeTrue();
            after.Should().BeSameAs(before, "the continuation goes back to the worker that awaited");
            after.Should().NotBeSameAs(completerThread);
            index.Should().BeGreaterThanOrEqualTo(0);
        }
    }

    [Fact]
    public async Task Completion_on_the_owner_worker_runs_after_the_completer_returns()
    {
        var scheduler = new WorkStealingTaskScheduler(2);
        await using var disposeScheduler = SchedulerTestHelpers.DisposeWithin(scheduler);
        using var blockers = new WorkerBlockers(scheduler, 1);

        bool ok = await scheduler.Factory.StartNew(async () =>
        {
            var waker = new TestWaker<int>();
            bool setReturned = false;
            Thread owner = Thread.CurrentThread;

            async Task<bool> Awaiter()
            {
                await waker.Task;
                return setReturned && Thread.CurrentThread == owner;
            }

            Task<bool> awaiting = Awaiter();
            waker.Registrations.Should().Be(1);
            waker.Core.SetResult(3);
            setReturned = true;
            return await awaiting;
        }).Unwrap();

        ok.Should().BeTrue("the owner's own completion goes to its LIFO slot and runs after SetResult returns, on the same worker");
    }

    [Fact]
    public async Task Under_scheduler_as_current_but_off_worker_resumes_on_the_scheduler()
    {
        var scheduler = new WorkStealingTaskScheduler(2);
        await using var disposeScheduler = SchedulerTestHelpers.DisposeWithin(scheduler);
        var waker = new TestWaker<int>();

        // A LongRunning task has the scheduler as TaskScheduler.Current but runs on a dedicated thread.
        Task<bool> task = scheduler.Factory.StartNew(async () =>
        {
            scheduler.IsWorkerThread.Should().BeFalse();
            await waker.Task;
            return scheduler.IsWorkerThread;
        }, CancellationToken.None, TaskCreationOptions.LongRunning, scheduler).Unwrap();

        waker.WaitForRegistration();
        waker.Core.SetResult(1);
        (await task).Should().BeTrue();
    }

    [Fact]
    public async Task Execution_context_flows_when_requested()
    {
        var local = new AsyncLocal<string?>();
        var waker = new TestWaker<int>();
        var seen = new TaskCompletionSource<string?>(TaskCreationOptions.RunContinuationsAsynchronously);

        local.Value = "flowed";
        ValueTaskAwaiter<int> awaiter = waker.Task.GetAwaiter();
        awaiter.OnCompleted(() => seen.SetResult(local.Value)); // OnCompleted (not Unsafe) asks for FlowExecutionContext
        local.Value = null;

        var completer = new Thread(() => waker.Core.SetResult(1));
        completer.Start();
        (await seen.Task.WaitAsync(TimeSpan.FromSeconds(10))).Should().Be("flowed");
        completer.Join();
    }

    [Fact]
    public async Task Execution_context_is_not_captured_when_not_requested()
    {
        var local = new AsyncLocal<string?>();
        var waker = new TestWaker<int>();
        var seen = new TaskCompletionSource<string?>(TaskCreationOptions.RunContinuationsAsynchronously);

        local.Value = "not flowed";
        ValueTaskAwaiter<int> awaiter = waker.Task.GetAwaiter();
        awaiter.UnsafeOnCompleted(() => seen.SetResult(local.Value));
        local.Value = null;

        var completer = new Thread(() => waker.Core.SetResult(1));
        completer.Start();
        (await seen.Task.WaitAsync(TimeSpan.FromSeconds(10))).Should().BeNull();
        completer.Join();
    }

    [Fact]
    public async Task AsyncLocal_survives_an_await_on_the_scheduler()
    {
        var scheduler = new WorkStealingTaskScheduler(2);
        await using var disposeScheduler = SchedulerTestHelpers.DisposeWithin(scheduler);
        var local = new AsyncLocal<int>();
        var waker = new TestWaker<int>();

        Task<int> task = scheduler.Factory.StartNew(async () =>
        {
            local.Value = 1234;
            await waker.Task;
            return local.Value;
        }).Unwrap();

        waker.WaitForRegistration();
        var completer = new Thread(() => waker.Core.SetResult(0));
        completer.Start();
        (await task).Should().Be(1234);
        completer.Join();
    }

    [Fact]
    public async Task Synchronization_context_receives_the_continuation()
    {
        var context = new RecordingSynchronizationContext();
        var waker = new TestWaker<int>();
        var resumed = new TaskCompletionSource<SynchronizationContext?>(TaskCreationOptions.RunContinuationsAsynchronously);

        SynchronizationContext? previous = SynchronizationContext.Current;
        SynchronizationContext.SetSynchronizationContext(context);
        try
        {
            waker.Task.GetAwaiter().OnCompleted(() => resumed.SetResult(SynchronizationContext.Current));
        }
        finally
        {
            SynchronizationContext.SetSynchronizationContext(previous);
        }

        var completer = new Thread(() => waker.Core.SetResult(1));
        completer.Start();
        (await resumed.Task.WaitAsync(TimeSpan.FromSeconds(10))).Should().BeSameAs(context);
        context.Posts.Should().Be(1);
        completer.Join();
    }

    [Fact]
    public async Task Synchronization_context_is_ignored_with_ConfigureAwait_false()
    {
        var context = new RecordingSynchronizationContext();
        var waker = new TestWaker<int>();
        var resumed = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);

        SynchronizationContext? previous = SynchronizationContext.Current;
        SynchronizationContext.SetSynchronizationContext(context);
        try
        {
            RegisterWithoutContext(waker.Task, () => resumed.SetResult());
        }
        finally
        {
            SynchronizationContext.SetSynchronizationContext(previous);
        }

        waker.Core.SetResult(1);
        await resumed.Task.WaitAsync(TimeSpan.FromSeconds(10));
        context.Posts.Should().Be(0);
    }

    [Fact]
    public async Task Other_task_scheduler_runs_the_continuation_as_a_task()
    {
        var scheduler = new CountingTaskScheduler();
        var waker = new TestWaker<int>();

        Task<bool> task = Task.Factory.StartNew(async () =>
        {
            await waker.Task;
            return TaskScheduler.Current == scheduler;
        }, CancellationToken.None, TaskCreationOptions.None, scheduler).Unwrap();

        waker.WaitForRegistration();
        waker.Core.SetResult(1);
        (await task).Should().BeTrue();
        scheduler.Queued.Should().BeGreaterThanOrEqualTo(2, "the start and the resumption both go through QueueTask");
    }

    [Fact]
    public async Task Completion_racing_registration_dispatches_exactly_once()
    {
        // The producer's publish and the awaiter's registration race on the state word: exactly one dispatches.
        const int Iterations = 5_000;
        var wakers = new TestWaker<int>[Iterations];
        for (int i = 0; i < Iterations; i++)
        {
            wakers[i] = new TestWaker<int>();
        }

        using var go = new Barrier(2);
        var completer = new Thread(() =>
        {
            for (int i = 0; i < Iterations; i++)
            {
                go.SignalAndWait();
                wakers[i].Core.SetResult(i);
            }
        });
        completer.Start();

        var runs = new int[Iterations];
        var done = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        int finished = 0;
        for (int i = 0; i < Iterations; i++)
        {
            int index = i;
            go.SignalAndWait();
            wakers[i].Core.OnCompleted(_ =>
            {
                Interlocked.Increment(ref runs[index]);
                if (Interlocked.Increment(ref finished) == Iterations)
                {
                    done.SetResult();
                }
            }, null, wakers[i].Version, ValueTaskSourceOnCompletedFlags.None);
        }

        await done.Task.WaitAsync(TimeSpan.FromSeconds(20));
        completer.Join();
        await Task.Delay(50); // a duplicate dispatch would land by now
        runs.Should().OnlyContain(count => count == 1);
        for (int i = 0; i < Iterations; i++)
        {
            wakers[i].Core.GetResult(wakers[i].Version).Should().Be(i);
        }
    }

    private static void RegisterWithoutContext(ValueTask<int> task, Action continuation) =>
        task.ConfigureAwait(false).GetAwaiter().OnCompleted(continuation);

    private sealed class TaskWorkItem() : Task(static () => { }), IThreadPoolWorkItem
    {
        public void Execute() => RunSynchronously();
    }

    private sealed class DetachedSource : IValueTaskSource<int>
    {
        public WakerCore<int> Core;
        public volatile bool Registered;

        public int GetResult(short token) => Core.GetResult(token);

        public ValueTaskSourceStatus GetStatus(short token) => Core.GetStatus(token);

        public void OnCompleted(Action<object?> continuation, object? state, short token, ValueTaskSourceOnCompletedFlags flags)
        {
            Core.OnCompleted(continuation, state, token, flags);
            Registered = true;
        }
    }
}
