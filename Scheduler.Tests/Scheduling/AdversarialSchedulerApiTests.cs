using System.Collections.Concurrent;
using System.Diagnostics.Metrics;
using System.Globalization;

namespace Scheduler.Tests.Scheduling;

/// <summary>
/// Adversarial tests of the scheduler's public surface (options, IsWorkerThread, the Meter, TPL integration, the
/// PipeScheduler, per-item thread state). Every wait is bounded, so a hang fails instead of blocking the run.
/// </summary>
public sealed class AdversarialSchedulerApiTests
{
    private static readonly TimeSpan Guard = TimeSpan.FromSeconds(10);

    // docs/scheduling.md ("The carrier task"): items that are not tasks run in the loop's own execution context, and the
    // worker puts it back after every item "as the ThreadPool does". A pipe callback that suppresses flow and forgets
    // to undo it (a user bug the ThreadPool tolerates) must not take the worker down: API.md, a failure of one work
    // item never harms the others.
    [Fact]
    public async Task A_pipe_callback_that_leaves_flow_suppressed_does_not_kill_its_worker()
    {
        using UnhandledExceptions.Tolerated tolerated = UnhandledExceptions.Tolerate(
            static e => e is InvalidOperationException && (e.StackTrace?.Contains("ExecutionContext", StringComparison.Ordinal) ?? false));
        var scheduler = SchedulerTestHelpers.Create(1);
        await using var disposeScheduler = SchedulerTestHelpers.DisposeWithin(scheduler);

        var ran = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        scheduler.PipeScheduler.Schedule(static state =>
        {
            _ = ExecutionContext.SuppressFlow(); // never undone
            ((TaskCompletionSource)state!).SetResult();
        }, ran);
        await ran.Task.WaitAsync(Guard);

        bool onWorker = await scheduler.Factory.StartNew(() => scheduler.IsWorkerThread).WaitAsync(Guard);
        onWorker.Should().BeTrue("the only worker must still be alive and running work");
        var suppressed = new TaskCompletionSource<bool>(TaskCreationOptions.RunContinuationsAsynchronously);
        scheduler.PipeScheduler.Schedule(static state => ((TaskCompletionSource<bool>)state!).SetResult(ExecutionContext.IsFlowSuppressed()), suppressed);
        (await suppressed.Task.WaitAsync(Guard)).Should().BeFalse("the suppression must not leak to the next callback");
        tolerated.SeenCount.Should().Be(0, "restoring the loop's context must not throw on the worker");
    }

    // CultureInfo.CurrentCulture lives in the execution context: a task or a pipe callback that changes it must not
    // leave it for the next item on the same worker.
    [Fact]
    public async Task A_culture_changed_by_a_task_or_a_pipe_callback_does_not_leak_to_the_next_item()
    {
        var scheduler = SchedulerTestHelpers.Create(1);
        await using var disposeScheduler = SchedulerTestHelpers.DisposeWithin(scheduler);
        CultureInfo before = await scheduler.Factory.StartNew(() => CultureInfo.CurrentCulture).WaitAsync(Guard);
        var foreign = before.Name == "fr-FR" ? new CultureInfo("de-DE") : new CultureInfo("fr-FR");

        await scheduler.Factory.StartNew(() => CultureInfo.CurrentCulture = foreign).WaitAsync(Guard);
        (await scheduler.Factory.StartNew(() => CultureInfo.CurrentCulture).WaitAsync(Guard)).Should().Be(before);

        var set = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        scheduler.PipeScheduler.Schedule(_ =>
        {
            CultureInfo.CurrentCulture = foreign;
            CultureInfo.CurrentUICulture = foreign;
            set.SetResult();
        }, null);
        await set.Task.WaitAsync(Guard);

        var seen = new TaskCompletionSource<(CultureInfo, CultureInfo)>(TaskCreationOptions.RunContinuationsAsynchronously);
        scheduler.PipeScheduler.Schedule(_ => seen.SetResult((CultureInfo.CurrentCulture, CultureInfo.CurrentUICulture)), null);
        (CultureInfo culture, CultureInfo uiCulture) = await seen.Task.WaitAsync(Guard);
        culture.Should().Be(before);
        uiCulture.Name.Should().NotBe(foreign.Name);
    }

    [Fact]
    public async Task IsWorkerThread_is_false_on_another_schedulers_worker_and_on_LongRunning_threads()
    {
        var a = SchedulerTestHelpers.Create(1);
        await using var disposeA = SchedulerTestHelpers.DisposeWithin(a);
        var b = SchedulerTestHelpers.Create(1);
        await using var disposeB = SchedulerTestHelpers.DisposeWithin(b);

        (bool onA, bool onB) = await b.Factory.StartNew(() => (a.IsWorkerThread, b.IsWorkerThread)).WaitAsync(Guard);
        onA.Should().BeFalse();
        onB.Should().BeTrue();

        (bool longRunningOnA, TaskScheduler current, string? name) = await a.Factory.StartNew(
            () => (a.IsWorkerThread, TaskScheduler.Current, Thread.CurrentThread.Name), TaskCreationOptions.LongRunning).WaitAsync(Guard);
        longRunningOnA.Should().BeFalse("a LongRunning task runs on a dedicated thread, not a worker");
        current.Should().BeSameAs(a);
        name.Should().Be("Test LongRunning");

        WorkStealingTaskScheduler.Shared.IsWorkerThread.Should().BeFalse();
        (await a.Factory.StartNew(() => WorkStealingTaskScheduler.Shared.IsWorkerThread).WaitAsync(Guard)).Should().BeFalse();
    }

    [Fact]
    public async Task Shared_has_background_workers_and_MaximumConcurrencyLevel_equals_WorkerCount()
    {
        WorkStealingTaskScheduler shared = WorkStealingTaskScheduler.Shared;
        shared.Should().BeSameAs(WorkStealingTaskScheduler.Shared);
        shared.MaximumConcurrencyLevel.Should().Be(shared.WorkerCount);
        shared.WorkerCount.Should().Be(Math.Min(Environment.ProcessorCount, WorkStealingTaskSchedulerOptions.MaxWorkerCount));
        shared.WorkerThreads.Should().OnlyContain(t => t != null && t.IsBackground);
        (await shared.Factory.StartNew(() => Thread.CurrentThread.IsBackground && shared.IsWorkerThread).WaitAsync(Guard)).Should().BeTrue();
        FluentActions.Invoking(() => shared.DisposeAsync()).Should().Throw<InvalidOperationException>();
    }

    // More workers than cores: every worker must still take work, so WorkerCount blocking tasks meet at a barrier.
    [Fact]
    public async Task More_workers_than_cores_all_run_tasks_at_once()
    {
        int workers = Environment.ProcessorCount + 4;
        var scheduler = SchedulerTestHelpers.Create(workers, spin: 0);
        await using var disposeScheduler = SchedulerTestHelpers.DisposeWithin(scheduler);
        using var barrier = new Barrier(workers);
        var threads = new ConcurrentDictionary<int, bool>();
        Task<bool>[] tasks = [.. Enumerable.Range(0, workers).Select(_ => scheduler.Factory.StartNew(() =>
        {
            threads[Environment.CurrentManagedThreadId] = scheduler.IsWorkerThread;
            return barrier.SignalAndWait(Guard);
        }))];

        bool[] met = await Task.WhenAll(tasks).WaitAsync(Guard + Guard);
        met.Should().OnlyContain(m => m, "all workers must be running one task each at the same time");
        threads.Should().HaveCount(workers);
        threads.Values.Should().OnlyContain(w => w);
    }

    [Fact]
    public async Task Parallel_For_honours_MaxDegreeOfParallelism_and_runs_only_on_workers()
    {
        var scheduler = SchedulerTestHelpers.Create(4);
        await using var disposeScheduler = SchedulerTestHelpers.DisposeWithin(scheduler);
        int running = 0, peak = 0, offWorker = 0, sum = 0;
        var options = new ParallelOptions { TaskScheduler = scheduler, MaxDegreeOfParallelism = 2 };

        ParallelLoopResult result = await Task.Run(() => Parallel.For(0, 2000, options, i =>
        {
            int now = Interlocked.Increment(ref running);
            int seen;
            while ((seen = Volatile.Read(ref peak)) < now && Interlocked.CompareExchange(ref peak, now, seen) != seen)
            {
            }

            if (!scheduler.IsWorkerThread)
            {
                Interlocked.Increment(ref offWorker);
            }

            Interlocked.Add(ref sum, i);
            Thread.SpinWait(50);
            Interlocked.Decrement(ref running);
        })).WaitAsync(Guard);

        result.IsCompleted.Should().BeTrue();
        sum.Should().Be(1999 * 2000 / 2);
        peak.Should().BeLessThanOrEqualTo(2);
        offWorker.Should().Be(0, "with TaskScheduler set, the caller's replica is queued too (the scheduler refuses inlining on foreign threads)");
    }

    [Fact]
    public async Task Parallel_ForEach_from_inside_a_single_worker_scheduler_completes_and_faults_as_AggregateException()
    {
        var scheduler = SchedulerTestHelpers.Create(1);
        await using var disposeScheduler = SchedulerTestHelpers.DisposeWithin(scheduler);
        var options = new ParallelOptions { TaskScheduler = scheduler };

        int count = await scheduler.Factory.StartNew(() =>
        {
            int n = 0;
            Parallel.ForEach(Enumerable.Range(0, 500), options, _ => Interlocked.Increment(ref n));
            return n;
        }).WaitAsync(Guard);
        count.Should().Be(500);

        var boom = new InvalidOperationException("body");
        Task faulted = scheduler.Factory.StartNew(() => Parallel.ForEach(Enumerable.Range(0, 100), options, i =>
        {
            if (i == 42)
            {
                throw boom;
            }
        }));
        Func<Task> wait = () => faulted.WaitAsync(Guard);
        (await wait.Should().ThrowAsync<AggregateException>()).Which.InnerExceptions.Should().ContainSingle().Which.Should().BeSameAs(boom);
    }

    [Fact]
    public async Task Parallel_ForEachAsync_with_MaxDegreeOfParallelism_one_runs_bodies_one_at_a_time()
    {
        var scheduler = SchedulerTestHelpers.Create(2);
        await using var disposeScheduler = SchedulerTestHelpers.DisposeWithin(scheduler);
        int running = 0, overlap = 0, done = 0;
        await Parallel.ForEachAsync(Enumerable.Range(0, 50), new ParallelOptions { TaskScheduler = scheduler, MaxDegreeOfParallelism = 1 }, async (_, _) =>
        {
            if (Interlocked.Increment(ref running) > 1)
            {
                Interlocked.Increment(ref overlap);
            }

            await Task.Yield();
            Interlocked.Decrement(ref running);
            Interlocked.Increment(ref done);
        }).WaitAsync(Guard);
        done.Should().Be(50);
        overlap.Should().Be(0);
    }

    [Fact]
    public async Task AttachedToParent_children_delay_the_parent_and_their_faults_nest_in_its_AggregateException()
    {
        var scheduler = SchedulerTestHelpers.Create(2);
        await using var disposeScheduler = SchedulerTestHelpers.DisposeWithin(scheduler);
        using var release = new ManualResetEventSlim();
        var childFault = new InvalidOperationException("child");
        int childrenDone = 0;

        Task parent = scheduler.Factory.StartNew(() =>
        {
            for (int i = 0; i < 3; i++)
            {
                Task.Factory.StartNew(() =>
                {
                    release.Wait(Guard);
                    Interlocked.Increment(ref childrenDone);
                }, CancellationToken.None, TaskCreationOptions.AttachedToParent, scheduler);
            }

            Task.Factory.StartNew(() => throw childFault, CancellationToken.None, TaskCreationOptions.AttachedToParent, scheduler);
        });

        await Task.Delay(50);
        parent.IsCompleted.Should().BeFalse("attached children still run");
        release.Set();
        Func<Task> wait = () => parent.WaitAsync(Guard);
        await wait.Should().ThrowAsync<InvalidOperationException>();
        parent.Exception!.InnerExceptions.Should().ContainSingle().Which.Should().BeOfType<AggregateException>()
            .Which.InnerExceptions.Should().ContainSingle().Which.Should().BeSameAs(childFault);
        childrenDone.Should().Be(3);

        // The scheduler's own Factory uses DenyChildAttach nowhere: its defaults are the TaskFactory's.
        scheduler.Factory.Scheduler.Should().BeSameAs(scheduler);
        scheduler.Factory.CreationOptions.Should().Be(TaskCreationOptions.None);
        scheduler.Factory.ContinuationOptions.Should().Be(TaskContinuationOptions.None);
        scheduler.Factory.CancellationToken.Should().Be(CancellationToken.None);
    }

    [Fact]
    public async Task Continuations_with_ExecuteSynchronously_LazyCancellation_and_ContinueWhenAll_run_on_workers()
    {
        var scheduler = SchedulerTestHelpers.Create(2);
        await using var disposeScheduler = SchedulerTestHelpers.DisposeWithin(scheduler);

        // Antecedent completed on a foreign thread: the synchronous continuation may not run there (inlining is refused).
        var source = new TaskCompletionSource<int>();
        Task<(bool, int)> sync = source.Task.ContinueWith(
            t => (scheduler.IsWorkerThread, t.Result), CancellationToken.None, TaskContinuationOptions.ExecuteSynchronously, scheduler);
        var completer = new Thread(() => source.SetResult(7));
        completer.Start();
        (await sync.WaitAsync(Guard)).Should().Be((true, 7));
        completer.Join(Guard).Should().BeTrue();

        // LazyCancellation: a canceled continuation does not complete before its antecedent.
        using var gate = new ManualResetEventSlim();
        using var cts = new CancellationTokenSource();
        Task antecedent = scheduler.Factory.StartNew(() => gate.Wait(Guard));
        Task lazy = antecedent.ContinueWith(_ => { }, cts.Token, TaskContinuationOptions.LazyCancellation, scheduler);
        cts.Cancel();
        await Task.Delay(20);
        lazy.IsCompleted.Should().BeFalse();
        gate.Set();
        Func<Task> waitLazy = () => lazy.WaitAsync(Guard);
        await waitLazy.Should().ThrowAsync<TaskCanceledException>();
        antecedent.IsCompletedSuccessfully.Should().BeTrue();

        Task<int>[] parts = [.. Enumerable.Range(1, 10).Select(i => scheduler.Factory.StartNew(() => i))];
        (int total, bool onWorker) = await scheduler.Factory.ContinueWhenAll(parts, ts => (ts.Sum(t => t.Result), scheduler.IsWorkerThread)).WaitAsync(Guard);
        total.Should().Be(55);
        onWorker.Should().BeTrue();
    }

    [Fact]
    public async Task PipeScheduler_rejects_a_null_callback_and_a_deeply_reentrant_chain_neither_overflows_nor_stalls()
    {
        var scheduler = SchedulerTestHelpers.Create(2);
        await using var disposeScheduler = SchedulerTestHelpers.DisposeWithin(scheduler);
        FluentActions.Invoking(() => scheduler.PipeScheduler.Schedule(null!, null))
            .Should().Throw<ArgumentNullException>().WithParameterName("action");

        // Each callback schedules the next from inside a callback: 100,000 deep would overflow the stack if run inline.
        const int Depth = 100_000;
        var done = new TaskCompletionSource<bool>(TaskCreationOptions.RunContinuationsAsynchronously);
        int remaining = Depth;
        bool allOnWorkers = true;
        Action<object?>? step = null;
        step = _ =>
        {
            allOnWorkers &= scheduler.IsWorkerThread;
            if (Interlocked.Decrement(ref remaining) == 0)
            {
                done.SetResult(allOnWorkers);
                return;
            }

            scheduler.PipeScheduler.Schedule(step!, null);
        };
        scheduler.PipeScheduler.Schedule(step, null);
        (await done.Task.WaitAsync(Guard)).Should().BeTrue();
    }

    // A task that blocks its worker on work it spawned itself (in its own LIFO slot and deque) must be rescued by the peer.
    [Fact]
    public async Task A_task_blocked_on_children_it_spawned_is_rescued_by_its_peer_and_outside_work_keeps_flowing()
    {
        var scheduler = SchedulerTestHelpers.Create(2);
        await using var disposeScheduler = SchedulerTestHelpers.DisposeWithin(scheduler);
        using var childrenDone = new CountdownEvent(20);

        Task<bool> blocker = scheduler.Factory.StartNew(() =>
        {
            for (int i = 0; i < 20; i++)
            {
                Task.Factory.StartNew(() => childrenDone.Signal(), CancellationToken.None, TaskCreationOptions.None, scheduler);
            }

            return childrenDone.Wait(Guard); // not Task.Wait: no inlining can help, only a thief
        });

        Task<int>[] outside = [.. Enumerable.Range(0, 200).Select(i => scheduler.Factory.StartNew(() => i))];
        (await blocker.WaitAsync(Guard + Guard)).Should().BeTrue();
        (await Task.WhenAll(outside).WaitAsync(Guard)).Sum().Should().Be(199 * 200 / 2);
    }

    // docs/scheduling.md: one measurement per live scheduler, tagged with scheduler.name and scheduler.id; a disposed
    // scheduler drops out. Two schedulers with the same prefix must be told apart by id, and counters never go back.
    [Fact]
    public async Task Two_schedulers_with_the_same_prefix_are_told_apart_in_the_meter_and_their_counters_never_go_back()
    {
        var options = new WorkStealingTaskSchedulerOptions { WorkerCount = 1, ThreadNamePrefix = "ApiMeterTwin" };
        var first = new WorkStealingTaskScheduler(options);
        await using var disposeFirst = SchedulerTestHelpers.DisposeWithin(first);
        var second = new WorkStealingTaskScheduler(options);
        await using var disposeSecond = SchedulerTestHelpers.DisposeWithin(second);
        first.Id.Should().NotBe(second.Id);

        await Task.WhenAll(Enumerable.Range(0, 5).Select(_ => first.Factory.StartNew(() => { }))).WaitAsync(Guard);
        await Task.WhenAll(Enumerable.Range(0, 50).Select(_ => second.Factory.StartNew(() => { }))).WaitAsync(Guard);
        await SchedulerTestHelpers.WaitUntilAsync(() => first.GetStatistics().TasksExecuted >= 5 && second.GetStatistics().TasksExecuted >= 50);

        var executed = new ConcurrentDictionary<int, List<long>>();
        using var listener = new MeterListener();
        listener.InstrumentPublished = (instrument, l) =>
        {
            if (instrument.Meter.Name == "Scheduler" && instrument.Name == "scheduler.tasks.executed")
            {
                l.EnableMeasurementEvents(instrument);
            }
        };
        listener.SetMeasurementEventCallback<long>((_, value, tags, _) =>
        {
            string? name = null;
            int? id = null;
            foreach (var tag in tags)
            {
                if (tag.Key == "scheduler.name")
                {
                    name = tag.Value as string;
                }
                else if (tag.Key == "scheduler.id")
                {
                    id = tag.Value as int?;
                }
            }

            if (name == "ApiMeterTwin" && id is int key)
            {
                executed.GetOrAdd(key, _ => []).Add(value);
            }
        });
        listener.Start();
        for (int round = 0; round < 5; round++)
        {
            await first.Factory.StartNew(() => { }).WaitAsync(Guard);
            listener.RecordObservableInstruments();
        }

        executed.Keys.Should().BeEquivalentTo([first.Id, second.Id]);
        executed[first.Id].Should().BeInAscendingOrder().And.OnlyContain(v => v >= 5 && v < 50);
        executed[second.Id].Should().BeInAscendingOrder().And.OnlyContain(v => v >= 50);

        await first.DisposeAsync().AsTask().WaitAsync(Guard);
        executed.Clear();
        listener.RecordObservableInstruments();
        executed.Keys.Should().BeEquivalentTo([second.Id], "a disposed scheduler drops out");
    }

    [Fact]
    public async Task Statistics_are_consistent_after_a_quiet_fork_join()
    {
        var scheduler = SchedulerTestHelpers.Create(2, spin: 0);
        await using var disposeScheduler = SchedulerTestHelpers.DisposeWithin(scheduler);
        SchedulerStatistics before = scheduler.GetStatistics();

        int result = await scheduler.Factory.StartNew(() =>
        {
            Task<int>[] children = [.. Enumerable.Range(0, 100).Select(i => Task.Factory.StartNew(() => i, CancellationToken.None, TaskCreationOptions.None, scheduler))];
            return children.Sum(c => c.Result);
        }).WaitAsync(Guard);
        result.Should().Be(4950);

        await SchedulerTestHelpers.WaitUntilAsync(() => scheduler.IsWorkerIdle(0) && scheduler.IsWorkerIdle(1));
        SchedulerStatistics after = scheduler.GetStatistics();
        (after.TasksExecuted + after.TasksInlined - before.TasksExecuted - before.TasksInlined).Should().BeGreaterThanOrEqualTo(101);
        // A thief may move entries its victim then inlines (stale, skipped): TasksStolen counts items moved, so it is
        // bounded by all the items ever run, not by TasksExecuted alone.
        after.TasksStolen.Should().BeLessThanOrEqualTo(after.TasksExecuted + after.TasksInlined, after.ToString());
        after.TasksInlined.Should().BeLessThanOrEqualTo(100);
        after.WorkerWakeups.Should().BeLessThanOrEqualTo(after.WorkerParks + 2);
        after.QueuedTasks.Should().Be(0);
    }

    // docs/scheduling.md, "nothing lost": a continuation, waker or pipe callback that arrives after every worker exited
    // runs on the ThreadPool. A ContinueWith registered while the scheduler was alive, whose antecedent completes on a
    // foreign thread after Dispose, is such a continuation: the user accepted it before Dispose and nobody can requeue it.
    [Fact]
    public async Task A_ContinueWith_registered_before_Dispose_still_runs_when_its_antecedent_completes_after()
    {
        var scheduler = SchedulerTestHelpers.Create(1);
        var source = new TaskCompletionSource<int>(TaskCreationOptions.RunContinuationsAsynchronously);
        int ran = 0;
        Task<int> continuation = source.Task.ContinueWith(t =>
        {
            Interlocked.Increment(ref ran);
            return t.Result + 1;
        }, scheduler);
        Task<int> viaFactory = scheduler.Factory.ContinueWhenAll([source.Task], ts => ts[0].Result + 2);

        await scheduler.DisposeAsync().AsTask().WaitAsync(Guard);
        await Task.Run(() => source.SetResult(40)).WaitAsync(Guard);

        Func<Task<int>> waitContinuation = () => continuation.WaitAsync(Guard);
        (await waitContinuation.Should().NotThrowAsync("a continuation accepted before Dispose is not lost")).Which.Should().Be(41);
        ran.Should().Be(1);
        Func<Task<int>> waitFactory = () => viaFactory.WaitAsync(Guard);
        (await waitFactory.Should().NotThrowAsync()).Which.Should().Be(42);
    }
}
