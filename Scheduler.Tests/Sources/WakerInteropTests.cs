using Scheduler.Sources;
using Scheduler.Tests.Scheduling;

namespace Scheduler.Tests.Sources;

/// <summary>
/// Pooled wakers consumed the ways the BCL offers besides a plain <c>await</c> (docs/wakers.md, "Where continuations
/// run"): <c>AsTask()</c>, <c>Task.WhenAll</c> over them, <c>ConfigureAwait(false)</c>. Each still consumes its rental
/// exactly once and never runs the continuation on the completing thread.
/// </summary>
public sealed class WakerInteropTests
{
    [Fact]
    public async Task AsTask_of_a_pending_rental_completes_off_the_completing_thread_and_consumes_the_rental()
    {
        var source = PooledValueTaskSource<int>.Rent();
        short version = source.Version;
        ValueTask<int> valueTask = source.Task;
        Task<int> task = valueTask.AsTask();
        task.IsCompleted.Should().BeFalse();
        Task<Thread> completedOn = task.ContinueWith(_ => Thread.CurrentThread, CancellationToken.None, TaskContinuationOptions.ExecuteSynchronously, TaskScheduler.Default);

        Thread? completerThread = null;
        var completer = new Thread(() =>
        {
            completerThread = Thread.CurrentThread;
            source.TrySetResult(version, 5).Should().BeTrue();
        });
        completer.Start();
        completer.Join();

        (await task.WithTimeout()).Should().Be(5);
        (await completedOn.WithTimeout()).Should().NotBeSameAs(completerThread, "the Task completes from the dispatched continuation, not inline in TrySetResult");

        // Consumed: the rental's token is stale now, for producers and for another read of the same ValueTask.
        source.TrySetResult(version, 6).Should().BeFalse();
        // (A stale token reports Faulted rather than throwing, so AsTask hands back a faulted Task.)
        Func<Task> readAgain = () => valueTask.AsTask();
        await readAgain.Should().ThrowAsync<InvalidOperationException>();
    }

    [Fact]
    public async Task Task_WhenAll_over_rentals_completed_out_of_order_collects_every_result()
    {
        const int Count = 200;
        var sources = new PooledValueTaskSource<int>[Count];
        var versions = new short[Count];
        var tasks = new Task<int>[Count];
        for (int i = 0; i < Count; i++)
        {
            sources[i] = PooledValueTaskSource<int>.Rent();
            versions[i] = sources[i].Version;
            tasks[i] = sources[i].Task.AsTask();
        }

        var completer = new Thread(() =>
        {
            for (int i = Count - 1; i >= 0; i--)
            {
                sources[i].TrySetResult(versions[i], i * 3);
            }
        });
        completer.Start();

        (await Task.WhenAll(tasks).WithTimeout()).Should().Equal(Enumerable.Range(0, Count).Select(i => i * 3));
        completer.Join();
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public async Task ConfigureAwait_false_resumes_on_the_workers_when_awaited_on_one_else_on_the_ThreadPool_never_on_the_completing_thread(bool onWorker)
    {
        // docs/wakers.md: a waker awaited on worker k goes to k's inbox whatever the await's flags (a peer may take it
        // from there while k counts as busy). Off the workers — a LongRunning task, where the scheduler is still
        // TaskScheduler.Current — the scheduling context that ConfigureAwait(false) drops would have brought it back;
        // without it the continuation goes to the ThreadPool.
        var scheduler = SchedulerTestHelpers.Create(2);
        await using var disposeScheduler = SchedulerTestHelpers.DisposeWithin(scheduler);

        for (int i = 0; i < 20; i++)
        {
            var source = PooledValueTaskSource<int>.Rent();
            short version = source.Version;
            Thread? completerThread = null;
            var completer = CompleteOnceSuspended(source, version, i, thread => completerThread = thread);

            (bool OnWorker, bool OnThreadPool, Thread After, int Value) resumed = await scheduler.Factory.StartNew(async () =>
            {
                ValueTask<int> task = source.Task;
                completer.Start();
                int value = await task.ConfigureAwait(false);
                return (scheduler.IsWorkerThread, Thread.CurrentThread.IsThreadPoolThread, Thread.CurrentThread, value);
            }, onWorker ? TaskCreationOptions.None : TaskCreationOptions.LongRunning).Unwrap().WithTimeout();

            completer.Join();
            resumed.Value.Should().Be(i);
            resumed.OnWorker.Should().Be(onWorker);
            resumed.OnThreadPool.Should().Be(!onWorker);
            resumed.After.Should().NotBeSameAs(completerThread);
        }
    }

    private static Thread CompleteOnceSuspended(PooledValueTaskSource<int> source, short version, int value, Action<Thread> started) =>
        new(() =>
        {
            while (!source.HoldsContinuationForTests)
            {
                Thread.Yield(); // complete only once the await has suspended: a completed await never leaves its thread
            }

            started(Thread.CurrentThread);
            source.TrySetResult(version, value);
        })
        { IsBackground = true, Name = "waker completer" };
}
