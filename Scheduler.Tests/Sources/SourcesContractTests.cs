using Scheduler.Sources;
using Scheduler.Tests.Scheduling;

namespace Scheduler.Tests.Sources;

/// <summary>API.md promises about the pooled sources that no other test pinned down on its own.</summary>
public sealed class SourcesContractTests
{
    [Fact]
    public void Result_less_source_returns_to_its_pool_and_a_stale_TrySet_never_touches_the_next_rental()
    {
        // The result-less pool is shared with other tests: a thread of theirs that joins it may replace its thread-cache
        // array, dropping what this thread cached (a documented rare miss), so the round trip is retried then.
        for (int attempt = 1; ; attempt++)
        {
            // Empty this thread's one-object cache first, so the source read below is the one the cache hands back.
            PooledValueTaskSource drained = PooledValueTaskSource.Rent();
            PooledValueTaskSource source = PooledValueTaskSource.Rent();
            short first = source.Version;
            source.TrySetResult(first).Should().BeTrue();
            source.Task.GetAwaiter().GetResult();
            PooledValueTaskSource again = PooledValueTaskSource.Rent();
            if (!ReferenceEquals(again, source))
            {
                attempt.Should().BeLessThan(5, "a thread-cache miss is rare");
                continue; // `again` and `drained` are pending rentals nobody awaits: left to the GC
            }

            short second = source.Version;
            second.Should().NotBe(first, "reading the result returned the source to its pool with a new version");
            source.TrySetResult(first).Should().BeFalse();
            source.TrySetException(first, new InvalidOperationException("stale")).Should().BeFalse();
            source.TrySetCanceled(first).Should().BeFalse();
            source.Task.IsCompleted.Should().BeFalse("a stale completion never touches the next rental");

            source.TrySetResult(second).Should().BeTrue();
            source.Task.IsCompletedSuccessfully.Should().BeTrue();
            source.Task.GetAwaiter().GetResult();

            drained.TrySetResult().Should().BeTrue();
            drained.Task.GetAwaiter().GetResult();
            return;
        }
    }

    [Fact]
    public async Task Unversioned_TrySetCanceled_carries_the_token_and_TrySetException_rethrows_the_same_instance()
    {
        using var cts = new CancellationTokenSource();
        await cts.CancelAsync();

        var canceled = PooledValueTaskSource<int>.Rent();
        canceled.TrySetCanceled(cts.Token).Should().BeTrue();
        Func<Task> awaitCanceled = async () => await canceled.Task;
        (await awaitCanceled.Should().ThrowAsync<OperationCanceledException>()).Which.CancellationToken.Should().Be(cts.Token);

        var faulted = PooledValueTaskSource.Rent();
        var error = new InvalidDataException("same instance");
        faulted.TrySetException(error).Should().BeTrue();
        Func<Task> awaitFaulted = async () => await faulted.Task;
        (await awaitFaulted.Should().ThrowAsync<InvalidDataException>()).Which.Should().BeSameAs(error);

        var versionedFault = PooledValueTaskSource<int>.Rent();
        versionedFault.TrySetException(versionedFault.Version, error).Should().BeTrue();
        Func<Task> awaitVersioned = async () => await versionedFault.Task;
        (await awaitVersioned.Should().ThrowAsync<InvalidDataException>()).Which.Should().BeSameAs(error);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task Awaited_under_the_scheduler_as_current_off_its_workers_resumes_on_a_worker_not_the_completing_thread(bool resultLess)
    {
        using var scheduler = new WorkStealingTaskScheduler(2);
        var resumed = new TaskCompletionSource<(bool OnWorker, bool Current, Thread Thread)>(TaskCreationOptions.RunContinuationsAsynchronously);
        PooledValueTaskSource<int>? typed = resultLess ? null : PooledValueTaskSource<int>.Rent();
        PooledValueTaskSource? plain = resultLess ? PooledValueTaskSource.Rent() : null;

        // A LongRunning task: TaskScheduler.Current is the scheduler, the thread is not one of its workers. The
        // continuation is registered (as an await does) before the task returns, so the completion below is a wake-up.
        Thread registeringThread = await scheduler.Factory.StartNew(() =>
        {
            scheduler.IsWorkerThread.Should().BeFalse();
            if (typed is not null)
            {
                var awaiter = typed.Task.GetAwaiter();
                awaiter.UnsafeOnCompleted(() =>
                {
                    awaiter.GetResult();
                    resumed.SetResult((scheduler.IsWorkerThread, TaskScheduler.Current == scheduler, Thread.CurrentThread));
                });
            }
            else
            {
                var awaiter = plain!.Task.GetAwaiter();
                awaiter.UnsafeOnCompleted(() =>
                {
                    awaiter.GetResult();
                    resumed.SetResult((scheduler.IsWorkerThread, TaskScheduler.Current == scheduler, Thread.CurrentThread));
                });
            }

            return Thread.CurrentThread;
        }, TaskCreationOptions.LongRunning).WithTimeout();

        Thread? completer = null;
        var foreign = new Thread(() =>
        {
            completer = Thread.CurrentThread;
            (typed?.TrySetResult(1) ?? plain!.TrySetResult()).Should().BeTrue();
        });
        foreign.Start();
        (bool onWorker, bool current, Thread thread) = await resumed.Task.WithTimeout();
        foreign.Join();

        onWorker.Should().BeTrue("the continuation is queued to the scheduler that was TaskScheduler.Current");
        current.Should().BeTrue();
        thread.Should().NotBeSameAs(completer, "it never runs inline on the completing thread");
        thread.Should().NotBeSameAs(registeringThread);
    }
}
