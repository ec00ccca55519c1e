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

    [Fact]
    public async Task Result_less_versioned_TrySetCanceled_carries_the_token()
    {
        using var cts = new CancellationTokenSource();
        await cts.CancelAsync();
        var source = PooledValueTaskSource.Rent();
        source.TrySetCanceled(source.Version, cts.Token).Should().BeTrue();
        Func<Task> awaiting = async () => await source.Task;
        (await awaiting.Should().ThrowAsync<OperationCanceledException>()).Which.CancellationToken.Should().Be(cts.Token);
    }

    [Fact]
    public async Task Awaited_on_a_worker_and_completed_by_a_foreign_thread_the_continuation_goes_to_that_worker_not_to_any()
    {
        // Without UseSynchronizationContext the await captures the scheduler as TaskScheduler.Current, and the promise
        // is the awaiting worker's queue, not the scheduler's global one. Each round completes from a foreign thread
        // while both workers look for work (the other one has just run an item): a continuation sent to the global queue
        // would be taken by whichever finds it first, so over the rounds it would resume on the other worker.
        var scheduler = new WorkStealingTaskScheduler(new WorkStealingTaskSchedulerOptions { WorkerCount = 2, ThreadNamePrefix = "OwnerDispatch" });
        await using var disposeScheduler = SchedulerTestHelpers.DisposeWithin(scheduler);
        for (int i = 0; i < 40; i++)
        {
            var source = PooledValueTaskSource<int>.Rent();
            short version = source.Version;
            int awaitingWorker = -1;
            var completer = new Thread(() =>
            {
                SpinWait.SpinUntil(() => source.HoldsContinuationForTests, SchedulerTestHelpers.Timeout);
                using var otherRan = new ManualResetEventSlim();
                scheduler.EnqueueToWorker(1 - Volatile.Read(ref awaitingWorker), new SchedulerTestHelpers.RecordingWorkItem(otherRan.Set));
                otherRan.Wait(SchedulerTestHelpers.Timeout);

                // A busy owner's inbox may be drained by an idle peer (by design): complete once the owner is idle.
                SpinWait.SpinUntil(() => scheduler.IsWorkerIdle(Volatile.Read(ref awaitingWorker)), SchedulerTestHelpers.Timeout);
                source.TrySetResult(version, i);
            });

            var (before, after, value) = await scheduler.Factory.StartNew(async () =>
            {
                scheduler.TryGetCurrentWorkerIndex(out awaitingWorker);
                completer.Start();
                int result = await source.Task;
                scheduler.TryGetCurrentWorkerIndex(out int resumedWorker);
                return (Volatile.Read(ref awaitingWorker), resumedWorker, result);
            }).Unwrap().WithTimeout();

            completer.Join();
            value.Should().Be(i);
            before.Should().BeGreaterThanOrEqualTo(0);
            after.Should().Be(before, "round {0}: the continuation goes to the awaiting worker's inbox, not to any worker", i);
        }
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task Awaited_under_the_scheduler_as_current_off_its_workers_resumes_on_a_worker_not_the_completing_thread(bool resultLess)
    {
        var scheduler = new WorkStealingTaskScheduler(2);
        await using var disposeScheduler = SchedulerTestHelpers.DisposeWithin(scheduler);
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

    [Fact]
    public void Built_in_sources_pool_up_to_256_or_64_per_core_each()
    {
        // docs/wakers.md: one pool per result type, capacity max(256, 64 x cores): the bound on what stays pinned after
        // a burst, and on how long one object lives (its 16-bit version wraps after 65,536 reuses).
        int expected = Math.Max(256, 64 * Environment.ProcessorCount);
        PooledValueTaskSource<int>.Pool.Capacity.Should().Be(expected);
        PooledValueTaskSource<WrapProbe>.Pool.Capacity.Should().Be(expected);
        PooledValueTaskSource.Pool.Capacity.Should().Be(expected);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void A_source_reused_65536_times_matches_its_first_version_again_and_no_token_before(bool resultLess)
    {
        // docs/wakers.md: each rental advances the 16-bit version by one, so every earlier token is stale until 65,536
        // reuses of the same object later, when the first matches again (why a token must not outlive its operation).
        // The walk covers the negative half of the short range, where a sign-extended comparison would go wrong.
        Func<object> rent = resultLess ? PooledValueTaskSource.Rent : PooledValueTaskSource<WrapProbe>.Rent;
        Func<object, short> version = resultLess ? s => ((PooledValueTaskSource)s).Version : s => ((PooledValueTaskSource<WrapProbe>)s).Version;
        Func<object, short, bool> complete = resultLess
            ? (s, v) => ((PooledValueTaskSource)s).TrySetResult(v)
            : (s, v) => ((PooledValueTaskSource<WrapProbe>)s).TrySetResult(v, new WrapProbe(v));
        Action<object> read = resultLess
            ? s => ((PooledValueTaskSource)s).Task.GetAwaiter().GetResult()
            : s => _ = ((PooledValueTaskSource<WrapProbe>)s).Task.Result;

        // Rent, complete, read: the read returns the source to this thread's one-object cache, so Rent hands it back.
        // Unless another thread joins the pool meanwhile (another test's) and replaces the cache array, dropping what
        // this thread cached (a documented rare miss): the walk then starts over with the object Rent gave instead.
        object source = rent();
        for (int attempt = 1; !WalkEveryVersion(ref source); attempt++)
        {
            attempt.Should().BeLessThan(5, "a thread-cache miss is rare");
        }

        bool WalkEveryVersion(ref object source)
        {
            short first = version(source);
            int refused = 0, notAdvancedByOne = 0, staleAccepted = 0;
            for (int i = 0; i < 65_536; i++)
            {
                short current = version(source);
                if (!complete(source, current))
                {
                    refused++;
                }

                read(source);
                object again = rent();
                if (!ReferenceEquals(again, source))
                {
                    source = again;
                    return false;
                }

                if (version(source) != (short)(current + 1))
                {
                    notAdvancedByOne++;
                }

                if (complete(source, current) || complete(source, first) != (i == 65_535))
                {
                    staleAccepted++;
                }
            }

            refused.Should().Be(0, "the current token always completes its rental");
            notAdvancedByOne.Should().Be(0);
            staleAccepted.Should().Be(0, "a stale token fails until the version has wrapped");
            version(source).Should().Be(first);
            read(source); // the first token's late completion landed in this (the 65,537th) rental: read it to pool the source
            return true;
        }
    }

    private readonly record struct WrapProbe(int Value);
}
