using System.Runtime.CompilerServices;
using System.Threading.Tasks.Sources;
using Scheduler.Sources;
using Scheduler.Tests.Scheduling;

namespace Scheduler.Tests.Sources;

public sealed class PooledValueTaskSourceTests
{
    // What a misuse error must tell its reader: which rule was broken and what to do instead.
    internal const string StaleTokenMessage = "The awaited operation is no longer current*can be awaited (or its result read) only once.";
    internal const string NotCompletedMessage = "The operation has not completed yet; await the ValueTask instead*";

    [Fact]
    public async Task Completed_rental_awaits_its_result()
    {
        var source = PooledValueTaskSource<int>.Rent();
        source.TrySetResult(17).Should().BeTrue();
        (await source.Task).Should().Be(17);
    }

    [Fact]
    public async Task Pending_rental_resumes_when_completed_from_another_thread()
    {
        var source = PooledValueTaskSource<string>.Rent();
        ValueTask<string> task = source.Task;
        var completer = new Thread(() =>
        {
            Thread.Sleep(20);
            source.TrySetResult("late").Should().BeTrue();
        });
        completer.Start();

        (await task).Should().Be("late");
        completer.Join();
    }

    [Fact]
    public void Reading_the_result_returns_the_source_to_its_pool_and_advances_the_version()
    {
        var source = PooledValueTaskSource<ReturnProbe>.Rent(); // a result type no other test uses: a private pool
        short version = source.Version;
        source.TrySetResult(new ReturnProbe(3));

        Read(source.Task).Value.Should().Be(3);
        source.Version.Should().NotBe(version);
        PooledValueTaskSource<ReturnProbe>.Rent().Should().BeSameAs(source, "the source went back to the pool (this thread's cache)");
    }

    [Fact]
    public async Task Second_await_throws_InvalidOperationException()
    {
        var source = PooledValueTaskSource<int>.Rent();
        ValueTask<int> task = source.Task;
        source.TrySetResult(1);
        await task;

        Func<Task> again = async () => await task;
        await again.Should().ThrowAsync<InvalidOperationException>().WithMessage(StaleTokenMessage);
    }

    [Fact]
    public async Task Second_concurrent_await_of_a_pending_rental_throws()
    {
        // The second registration does not throw out of OnCompleted (an await's builder would rethrow that on the
        // ThreadPool): its continuation runs on its own, and its read of the result throws. The first await is unharmed.
        var source = PooledValueTaskSource<int>.Rent();
        ValueTask<int> task = source.Task;
        var first = new TaskCompletionSource<int>(TaskCreationOptions.RunContinuationsAsynchronously);
        ValueTaskAwaiter<int> firstAwaiter = task.GetAwaiter();
        firstAwaiter.OnCompleted(() => first.SetResult(firstAwaiter.GetResult()));

        var second = new TaskCompletionSource<Exception?>(TaskCreationOptions.RunContinuationsAsynchronously);
        ValueTaskAwaiter<int> secondAwaiter = task.GetAwaiter();
        Action again = () => secondAwaiter.OnCompleted(() =>
        {
            try
            {
                secondAwaiter.GetResult();
                second.SetResult(null);
            }
            catch (Exception e)
            {
                second.SetResult(e);
            }
        });
        again.Should().NotThrow();
        (await second.Task.WaitAsync(TimeSpan.FromSeconds(10))).Should().BeOfType<InvalidOperationException>();

        source.TrySetResult(5).Should().BeTrue();
        (await first.Task.WaitAsync(TimeSpan.FromSeconds(10))).Should().Be(5);
    }

    [Fact]
    public void Result_before_completion_throws_and_leaves_the_rental_usable()
    {
        var source = PooledValueTaskSource<int>.Rent();
        ValueTask<int> task = source.Task;

        Action early = () => _ = Read(task);
        early.Should().Throw<InvalidOperationException>().WithMessage(NotCompletedMessage);

        source.TrySetResult(8).Should().BeTrue();
        Read(task).Should().Be(8);
    }

    [Fact]
    public void Stale_version_returns_false_and_never_touches_the_next_rental()
    {
        var source = PooledValueTaskSource<StaleProbe>.Rent();
        short first = source.Version;
        source.TrySetResult(first, new StaleProbe(1)).Should().BeTrue();
        source.TrySetResult(first, new StaleProbe(2)).Should().BeFalse("a completed rental cannot be completed twice");
        Read(source.Task).Value.Should().Be(1);

        // The source went back to the (test-private) pool; renting again yields it, with a new version.
        PooledValueTaskSource<StaleProbe>.Rent().Should().BeSameAs(source);
        short second = source.Version;
        second.Should().NotBe(first);
        source.TrySetResult(first, new StaleProbe(3)).Should().BeFalse();
        source.TrySetException(first, new InvalidOperationException()).Should().BeFalse();
        source.TrySetCanceled(first).Should().BeFalse();
        source.Task.IsCompleted.Should().BeFalse();

        source.TrySetResult(second, new StaleProbe(4)).Should().BeTrue();
        Read(source.Task).Value.Should().Be(4);
    }

    [Fact]
    public async Task TrySetCanceled_throws_OperationCanceledException_carrying_the_token()
    {
        using var cts = new CancellationTokenSource();
        cts.Cancel();
        var source = PooledValueTaskSource<int>.Rent();
        source.TrySetCanceled(source.Version, cts.Token).Should().BeTrue();

        Func<Task> awaiting = async () => await source.Task;
        (await awaiting.Should().ThrowAsync<OperationCanceledException>()).Which.CancellationToken.Should().Be(cts.Token);
    }

    [Fact]
    public async Task TrySetException_rethrows_the_same_instance()
    {
        var error = new FormatException("bad frame");
        var source = PooledValueTaskSource<int>.Rent();
        ValueTask<int> task = source.Task;
        var completer = new Thread(() =>
        {
            Thread.Sleep(10);
            source.TrySetException(error);
        });
        completer.Start();

        Func<Task> awaiting = async () => await task;
        (await awaiting.Should().ThrowAsync<FormatException>()).Which.Should().BeSameAs(error);
        completer.Join();
    }

    [Fact]
    public void Faulted_and_canceled_rentals_also_return_to_the_pool()
    {
        var faulted = PooledValueTaskSource<FaultProbe>.Rent();
        faulted.TrySetException(new InvalidDataException());
        Action a = () => Read(faulted.Task);
        a.Should().Throw<InvalidDataException>();
        PooledValueTaskSource<FaultProbe>.Rent().Should().BeSameAs(faulted);

        faulted.TrySetCanceled();
        Action b = () => Read(faulted.Task);
        b.Should().Throw<OperationCanceledException>();
        PooledValueTaskSource<FaultProbe>.Rent().Should().BeSameAs(faulted);
    }

    [Fact]
    public void Only_one_producer_wins()
    {
        var source = PooledValueTaskSource<int>.Rent();
        short version = source.Version;
        source.TrySetCanceled(version).Should().BeTrue();
        source.TrySetResult(version, 1).Should().BeFalse();
        source.TrySetException(version, new InvalidOperationException()).Should().BeFalse();
        source.TrySetResult(2).Should().BeFalse();
        source.TrySetException(new InvalidOperationException()).Should().BeFalse();
        source.TrySetCanceled().Should().BeFalse();
        source.Task.IsCanceled.Should().BeTrue();
        Action read = () => _ = Read(source.Task);
        read.Should().Throw<OperationCanceledException>();
    }

    [Fact]
    public void Null_exception_is_rejected()
    {
        var source = PooledValueTaskSource<int>.Rent();
        Action a = () => source.TrySetException(null!);
        Action b = () => source.TrySetException(source.Version, null!);
        // Named as the caller wrote it: the core's own check would name its parameter "error".
        a.Should().Throw<ArgumentNullException>().WithParameterName("exception");
        b.Should().Throw<ArgumentNullException>().WithParameterName("exception");

        var plain = PooledValueTaskSource.Rent();
        Action c = () => plain.TrySetException(null!);
        Action d = () => plain.TrySetException(plain.Version, null!);
        c.Should().Throw<ArgumentNullException>().WithParameterName("exception");
        d.Should().Throw<ArgumentNullException>().WithParameterName("exception");
    }

    [Fact]
    public async Task Continuation_runs_on_the_awaiting_worker_never_on_the_completing_thread()
    {
        var scheduler = new WorkStealingTaskScheduler(2);
        await using var disposeScheduler = SchedulerTestHelpers.DisposeWithin(scheduler);
        using var blockers = new WorkerBlockers(scheduler, 1);

        for (int i = 0; i < 100; i++)
        {
            var source = PooledValueTaskSource<int>.Rent();
            short version = source.Version;
            using var awaiting = new ManualResetEventSlim();
            Thread? completerThread = null;
            var completer = new Thread(() =>
            {
                awaiting.Wait();
                Thread.Sleep(1); // let the worker reach the await (either path must resume on it)
                completerThread = Thread.CurrentThread;
                source.TrySetResult(version, i);
            });
            completer.Start();

            var (before, after, value) = await scheduler.Factory.StartNew(async () =>
            {
                Thread beforeThread = Thread.CurrentThread;
                ValueTask<int> task = source.Task;
                awaiting.Set();
                int result = await task;
                return (beforeThread, Thread.CurrentThread, result);
            }).Unwrap();

            completer.Join();
            value.Should().Be(i);
            after.Should().BeSameAs(before);
            after.Should().NotBeSameAs(completerThread);
        }
    }

    [Fact]
    public async Task Result_less_source_follows_the_same_contract()
    {
        var source = PooledValueTaskSource.Rent();
        short first = source.Version;
        ValueTask task = source.Task;
        task.IsCompleted.Should().BeFalse();
        source.TrySetResult(first).Should().BeTrue();
        source.TrySetResult(first).Should().BeFalse();
        await task;

        source.Version.Should().NotBe(first);
        source.TrySetResult(first).Should().BeFalse();
        Func<Task> again = async () => await task;
        await again.Should().ThrowAsync<InvalidOperationException>().WithMessage(StaleTokenMessage);

        var canceled = PooledValueTaskSource.Rent();
        using var cts = new CancellationTokenSource();
        cts.Cancel();
        canceled.TrySetCanceled(cts.Token).Should().BeTrue();
        Func<Task> c = async () => await canceled.Task;
        (await c.Should().ThrowAsync<OperationCanceledException>()).Which.CancellationToken.Should().Be(cts.Token);

        var faulted = PooledValueTaskSource.Rent();
        var error = new TimeoutException();
        faulted.TrySetException(faulted.Version, error).Should().BeTrue();
        faulted.TrySetCanceled(faulted.Version).Should().BeFalse();
        Func<Task> f = async () => await faulted.Task;
        (await f.Should().ThrowAsync<TimeoutException>()).Which.Should().BeSameAs(error);

        var early = PooledValueTaskSource.Rent();
        Action read = () => early.Task.GetAwaiter().GetResult();
        read.Should().Throw<InvalidOperationException>().WithMessage(NotCompletedMessage);
        early.TrySetException(new InvalidOperationException("x")).Should().BeTrue();
        early.TrySetResult().Should().BeFalse();
    }

    [Fact]
    public async Task Result_less_source_resumes_on_the_awaiting_worker()
    {
        var scheduler = new WorkStealingTaskScheduler(2);
        await using var disposeScheduler = SchedulerTestHelpers.DisposeWithin(scheduler);
        using var blockers = new WorkerBlockers(scheduler, 1);
        var source = PooledValueTaskSource.Rent();
        using var awaiting = new ManualResetEventSlim();
        var completer = new Thread(() =>
        {
            awaiting.Wait();
            Thread.Sleep(5);
            source.TrySetResult();
        });
        completer.Start();

        bool same = await scheduler.Factory.StartNew(async () =>
        {
            Thread before = Thread.CurrentThread;
            ValueTask task = source.Task;
            awaiting.Set();
            await task;
            return Thread.CurrentThread == before;
        }).Unwrap();

        same.Should().BeTrue();
        completer.Join();
    }

    [Fact]
    public async Task Completion_after_the_scheduler_shut_down_still_runs_the_continuation()
    {
        var scheduler = new WorkStealingTaskScheduler(1);
        var source = PooledValueTaskSource<int>.Rent();
        var resumed = new TaskCompletionSource<int>(TaskCreationOptions.RunContinuationsAsynchronously);
        await scheduler.Factory.StartNew(() =>
        {
            ValueTask<int> task = source.Task;
            task.GetAwaiter().UnsafeOnCompleted(() => resumed.SetResult(task.GetAwaiter().GetResult()));
        });

        await SchedulerTestHelpers.DisposeWithin(scheduler).DisposeAsync(); // the worker exits: a pending awaiter does not keep it alive
        source.TrySetResult(5).Should().BeTrue();
        (await resumed.Task.WaitAsync(TimeSpan.FromSeconds(10))).Should().Be(5, "late wake-ups run on the ThreadPool, never lost");
    }

    [Fact]
    public async Task Execution_context_flows_to_the_owner_worker_when_requested()
    {
        var scheduler = new WorkStealingTaskScheduler(2);
        await using var disposeScheduler = SchedulerTestHelpers.DisposeWithin(scheduler);
        using var blockers = new WorkerBlockers(scheduler, 1);
        var local = new AsyncLocal<string?>();
        var source = PooledValueTaskSource<int>.Rent();
        var seen = new TaskCompletionSource<(string?, bool)>(TaskCreationOptions.RunContinuationsAsynchronously);

        Thread worker = await scheduler.Factory.StartNew(() =>
        {
            local.Value = "from the worker";
            ValueTask<int> task = source.Task;
            task.GetAwaiter().OnCompleted(() =>
            {
                _ = task.GetAwaiter().GetResult();
                seen.SetResult((local.Value, scheduler.IsWorkerThread));
            });
            local.Value = null;
            return Thread.CurrentThread;
        });

        var completer = new Thread(() => source.TrySetResult(1));
        completer.Start();
        (string? value, bool onWorker) = await seen.Task.WaitAsync(TimeSpan.FromSeconds(10));
        completer.Join();
        value.Should().Be("from the worker");
        onWorker.Should().BeTrue();
        worker.Should().NotBeNull();
    }

    [Fact]
    public async Task AsyncLocal_values_survive_the_await()
    {
        var local = new AsyncLocal<string?>();
        var source = PooledValueTaskSource<int>.Rent();
        ValueTask<int> task = source.Task;
        var seen = new TaskCompletionSource<string?>(TaskCreationOptions.RunContinuationsAsynchronously);

        local.Value = "kept";
        task.GetAwaiter().OnCompleted(() =>
        {
            seen.SetResult(local.Value);
            _ = task.GetAwaiter().GetResult();
        });
        local.Value = null;

        var completer = new Thread(() => source.TrySetResult(1));
        completer.Start();
        (await seen.Task.WaitAsync(TimeSpan.FromSeconds(10))).Should().Be("kept");
        completer.Join();
    }

    [Fact]
    public async Task Synchronization_context_is_honoured()
    {
        var context = new RecordingSynchronizationContext();
        var source = PooledValueTaskSource<int>.Rent();
        ValueTask<int> task = source.Task;
        var resumed = new TaskCompletionSource<SynchronizationContext?>(TaskCreationOptions.RunContinuationsAsynchronously);

        SynchronizationContext? previous = SynchronizationContext.Current;
        SynchronizationContext.SetSynchronizationContext(context);
        try
        {
            task.GetAwaiter().OnCompleted(() =>
            {
                _ = task.GetAwaiter().GetResult();
                resumed.SetResult(SynchronizationContext.Current);
            });
        }
        finally
        {
            SynchronizationContext.SetSynchronizationContext(previous);
        }

        var completer = new Thread(() => source.TrySetResult(2));
        completer.Start();
        (await resumed.Task.WaitAsync(TimeSpan.FromSeconds(10))).Should().BeSameAs(context);
        context.Posts.Should().Be(1);
        completer.Join();
    }

    // Reads a ValueTask's result synchronously (the blocking read is the behaviour under test).
    private static T Read<T>(ValueTask<T> task) => task.Result;

    private readonly record struct ReturnProbe(int Value);

    private readonly record struct StaleProbe(int Value);

    private readonly record struct FaultProbe(int Value);
}
