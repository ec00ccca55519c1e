namespace Scheduler.Tests.Scheduling;

public sealed class DisposeTests
{
    [Fact]
    public void StartNew_after_Dispose_throws_TaskSchedulerException_wrapping_ObjectDisposedException()
    {
        var scheduler = SchedulerTestHelpers.Create(2);
        SchedulerTestHelpers.DisposeBounded(scheduler);

        ((Action)(() => scheduler.Factory.StartNew(() => { })))
            .Should().Throw<TaskSchedulerException>().WithInnerException<ObjectDisposedException>()
            .WithMessage("The scheduler has been disposed and accepts no new work from outside its own tasks.*")
            .Which.ObjectName.Should().Be(nameof(WorkStealingTaskScheduler));
        ((Action)(() => Task.Factory.StartNew(() => { }, CancellationToken.None, TaskCreationOptions.LongRunning, scheduler)))
            .Should().Throw<TaskSchedulerException>().WithInnerException<ObjectDisposedException>();
    }

    [Fact]
    public async Task DisposeAsync_on_one_of_its_workers_completes_at_once()
    {
        // A worker cannot wait for the workers to exit: they wait for its loop to end. The workers then drain and exit
        // on their own, and the outside caller's DisposeAsync waits for that.
        var scheduler = SchedulerTestHelpers.Create(2);
        bool completedAtOnce = await scheduler.Factory.StartNew(() => scheduler.DisposeAsync().AsTask().IsCompleted).WithTimeout();

        completedAtOnce.Should().BeTrue("the ValueTask returned on a worker is already complete (the workers have not exited yet)");
        await scheduler.DisposeAsync().AsTask().WithTimeout();
        scheduler.IsTerminated.Should().BeTrue();
    }

    [Fact]
    public void Dispose_runs_everything_already_queued_then_joins_the_workers()
    {
        var scheduler = SchedulerTestHelpers.Create(2);
        using var gate = new ManualResetEventSlim();
        int ran = 0;
        Task[] blockers = Enumerable.Range(0, 2).Select(_ => scheduler.Factory.StartNew(() => gate.Wait(SchedulerTestHelpers.Timeout))).ToArray();
        Task[] queued = Enumerable.Range(0, 1000).Select(_ => scheduler.Factory.StartNew(() => Interlocked.Increment(ref ran))).ToArray();

        var disposer = Task.Run(scheduler.Dispose);
        Thread.Sleep(20);
        disposer.IsCompleted.Should().BeFalse("workers are still busy");
        gate.Set();
        disposer.Wait(SchedulerTestHelpers.Timeout).Should().BeTrue();

        ran.Should().Be(1000);
        queued.Concat(blockers).Should().OnlyContain(t => t.IsCompletedSuccessfully);
    }

    [Fact]
    public void Work_spawned_by_running_tasks_during_shutdown_still_runs()
    {
        var scheduler = SchedulerTestHelpers.Create(2);
        using var gate = new ManualResetEventSlim();
        int children = 0;
        Task parent = scheduler.Factory.StartNew(async () =>
        {
            gate.Wait(SchedulerTestHelpers.Timeout);
            for (int i = 0; i < 100; i++)
            {
                await Task.Yield();
                Interlocked.Increment(ref children);
            }
        }).Unwrap();

        var disposer = Task.Run(scheduler.Dispose);
        Thread.Sleep(20);
        gate.Set();
        disposer.Wait(SchedulerTestHelpers.Timeout).Should().BeTrue();
        children.Should().Be(100);
        parent.IsCompletedSuccessfully.Should().BeTrue();
    }

    [Fact]
    public void Dispose_is_idempotent()
    {
        var scheduler = SchedulerTestHelpers.Create(2);
        SchedulerTestHelpers.DisposeBounded(scheduler);
        SchedulerTestHelpers.DisposeBounded(scheduler);
        scheduler.DisposeAsync().AsTask().IsCompletedSuccessfully.Should().BeTrue();
    }

    [Fact]
    public async Task Dispose_from_a_worker_does_not_deadlock()
    {
        var scheduler = SchedulerTestHelpers.Create(2);
        int after = 0;
        Task queuedBehind = Task.CompletedTask;
        await scheduler.Factory.StartNew(() =>
        {
            queuedBehind = Task.Factory.StartNew(() => Interlocked.Increment(ref after), CancellationToken.None, TaskCreationOptions.None, scheduler);
            scheduler.Dispose(); // cannot join itself: returns, the workers drain and exit
        }).WithTimeout();

        await queuedBehind.WithTimeout();
        after.Should().Be(1);
        await scheduler.DisposeAsync().AsTask().WithTimeout();

        var other = SchedulerTestHelpers.Create(1);
        await other.Factory.StartNew(async () => await other.DisposeAsync()).Unwrap().WithTimeout();
        await other.DisposeAsync().AsTask().WithTimeout();
    }

    [Fact]
    public async Task DisposeAsync_waits_for_the_workers_without_blocking()
    {
        var scheduler = SchedulerTestHelpers.Create(2);
        using var gate = new ManualResetEventSlim();
        Task blocker = scheduler.Factory.StartNew(() => gate.Wait(SchedulerTestHelpers.Timeout));
        await Task.Delay(10);

        Task disposing = scheduler.DisposeAsync().AsTask();
        disposing.IsCompleted.Should().BeFalse();
        gate.Set();
        await disposing.WithTimeout();
        blocker.IsCompletedSuccessfully.Should().BeTrue();
        ((Action)(() => scheduler.Factory.StartNew(() => { }))).Should().Throw<TaskSchedulerException>();
    }

    [Fact]
    public async Task Targeted_work_arriving_after_shutdown_runs_on_the_thread_pool_instead_of_being_lost()
    {
        var scheduler = SchedulerTestHelpers.Create(2);
        SchedulerTestHelpers.DisposeBounded(scheduler);
        var ran = new TaskCompletionSource<bool>(TaskCreationOptions.RunContinuationsAsynchronously);
        scheduler.EnqueueToWorker(1, new SchedulerTestHelpers.RecordingWorkItem(() => ran.SetResult(Thread.CurrentThread.IsThreadPoolThread)));
        (await ran.Task.WithTimeout()).Should().BeTrue();

        var scheduled = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        scheduler.PipeScheduler.Schedule(_ => scheduled.SetResult(), null);
        await scheduled.Task.WithTimeout();
    }

    [Fact]
    public async Task An_await_resuming_from_a_late_timer_after_Dispose_still_completes_its_method()
    {
        // An async method on the scheduler is suspended on a timer when the scheduler is disposed: nothing of it is
        // queued, so the workers exit. The timer then resumes it from a ThreadPool thread through QueueTask, which
        // refuses outside producers after Dispose; the runtime swallows that refusal and the method never resumed.
        var scheduler = SchedulerTestHelpers.Create(2);
        var release = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        Task<bool> method = SuspendUntil(scheduler, release.Task, yieldAfterResuming: false);
        await scheduler.DisposeAsync().AsTask().WithTimeout();
        release.SetResult(); // a late wake-up: completes from this (non-worker) thread's continuation on the ThreadPool

        await method.WithTimeout(); // the resumption hops through the ThreadPool, which a loaded run can hold for seconds
        ((Action)(() => scheduler.Factory.StartNew(() => { }))).Should().Throw<TaskSchedulerException>().WithInnerException<ObjectDisposedException>();
    }

    [Fact]
    public async Task Await_Task_Yield_on_a_LongRunning_thread_after_Dispose_resumes_instead_of_crashing()
    {
        // A LongRunning task of the scheduler sees it as TaskScheduler.Current, so Task.Yield queues its continuation
        // there with StartNew(PreferFairness) from a thread that is no worker. After Dispose that was refused like an
        // outside producer's StartNew; the async method builder cannot hand the refusal to the method and rethrows it
        // on the ThreadPool: an unhandled exception (the process ends) and a method that never resumes.
        using UnhandledExceptions.Tolerated tolerated = UnhandledExceptions.Tolerate(IsDisposedRefusal);
        var scheduler = SchedulerTestHelpers.Create(2);
        using var disposed = new ManualResetEventSlim();
        Task<int> method = Task.Factory.StartNew(
            async () =>
            {
                disposed.Wait(SchedulerTestHelpers.Timeout);
                await Task.Yield();
                await Task.Delay(1);
                await Task.Yield();
                return 42;
            },
            CancellationToken.None,
            TaskCreationOptions.LongRunning,
            scheduler).Unwrap();

        await scheduler.DisposeAsync().AsTask().WithTimeout();
        disposed.Set();

        Task finished = await Task.WhenAny(method, SpinUntilAsync(() => tolerated.Seen));
        tolerated.Seen.Should().BeFalse("an await must resume, not throw on the ThreadPool");
        finished.Should().BeSameAs(method);
        (await method).Should().Be(42);
    }

    [Fact]
    public async Task Await_Task_Yield_in_a_method_resumed_after_the_workers_exited_still_completes()
    {
        // The timer resumes the method on the ThreadPool (the workers are gone), still with the scheduler as
        // TaskScheduler.Current: its Task.Yield must be accepted like the resumption itself was.
        using UnhandledExceptions.Tolerated tolerated = UnhandledExceptions.Tolerate(IsDisposedRefusal);
        var scheduler = SchedulerTestHelpers.Create(2);
        var release = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        Task<bool> method = SuspendUntil(scheduler, release.Task, yieldAfterResuming: true);
        await scheduler.DisposeAsync().AsTask().WithTimeout();
        release.SetResult();

        Task finished = await Task.WhenAny(method, SpinUntilAsync(() => tolerated.Seen));
        tolerated.Seen.Should().BeFalse("an await must resume, not throw on the ThreadPool");
        finished.Should().BeSameAs(method);
        (await method).Should().BeTrue();
    }

    [Fact]
    public void StartNew_from_outside_after_Dispose_is_still_refused_while_the_schedulers_own_LongRunning_task_may_spawn()
    {
        var scheduler = SchedulerTestHelpers.Create(2);
        using var disposed = new ManualResetEventSlim();
        Task<int> longRunning = Task.Factory.StartNew(
            () =>
            {
                disposed.Wait(SchedulerTestHelpers.Timeout);
                return Task.Factory.StartNew(() => 7).Result; // TaskScheduler.Current: this scheduler
            },
            CancellationToken.None,
            TaskCreationOptions.LongRunning,
            scheduler);

        SchedulerTestHelpers.DisposeBounded(scheduler);
        ((Action)(() => scheduler.Factory.StartNew(() => { }))).Should().Throw<TaskSchedulerException>().WithInnerException<ObjectDisposedException>();
        disposed.Set();
        longRunning.Wait(SchedulerTestHelpers.Timeout).Should().BeTrue();
        longRunning.Result.Should().Be(7);
    }

    private static bool IsDisposedRefusal(Exception exception) =>
        exception is TaskSchedulerException { InnerException: ObjectDisposedException };

    /// <summary>
    /// Polls <paramref name="condition"/> for the generous timeout: it races a method whose resumptions hop through the
    /// ThreadPool, which a loaded run can hold for seconds, so a shorter poll could finish first and read as a lost method.
    /// </summary>
    private static async Task SpinUntilAsync(Func<bool> condition)
    {
        var deadline = DateTime.UtcNow + SchedulerTestHelpers.Timeout;
        while (!condition() && DateTime.UtcNow < deadline)
        {
            await Task.Delay(5);
        }
    }

    /// <summary>
    /// Starts an async method on <paramref name="scheduler"/> and returns once it is suspended on <paramref name="release"/>;
    /// resumed, it optionally yields once more and reports whether it is still under the scheduler.
    /// </summary>
    private static Task<bool> SuspendUntil(WorkStealingTaskScheduler scheduler, Task release, bool yieldAfterResuming)
    {
        using var suspended = new ManualResetEventSlim();
        Task<bool> method = scheduler.Factory.StartNew(async () =>
        {
            suspended.Set();
            await release;
            if (yieldAfterResuming)
            {
                await Task.Yield();
            }

            return TaskScheduler.Current == scheduler;
        }).Unwrap();

        suspended.Wait(SchedulerTestHelpers.Timeout).Should().BeTrue();
        return method;
    }
}
