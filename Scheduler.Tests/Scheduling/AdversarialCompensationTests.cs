using System.Collections.Concurrent;
using System.Diagnostics;
using System.Globalization;
using Scheduler.Sources;

namespace Scheduler.Tests.Scheduling;

/// <summary>
/// Adversarial tests of blocking compensation (docs/scheduling.md, "Blocking compensation"): every worker is held in a
/// wait the BCL does not inline while work is queued from outside, so that only compensation threads can run it. Then the
/// work does what user code does: throws, changes its thread's contexts, interrupts its thread, disposes the scheduler,
/// overflows deques, blocks forever. Workers are background threads and every wait is bounded; a deadlocked scheduler is
/// not waited for.
/// </summary>
public sealed class AdversarialCompensationTests(Xunit.Abstractions.ITestOutputHelper output)
{
    private static readonly TimeSpan Bound = TimeSpan.FromSeconds(10);

    private static WorkStealingTaskScheduler Create(string prefix, int workers = 2, bool context = false, int localQueueCapacity = 256) =>
        new(new WorkStealingTaskSchedulerOptions
        {
            WorkerCount = workers,
            SpinIterations = 30,
            UseBackgroundThreads = true,
            UseSynchronizationContext = context,
            LocalQueueCapacity = localQueueCapacity,
            ThreadNamePrefix = prefix,
        });

    private static bool OnCompensationThread() => Thread.CurrentThread.Name?.EndsWith(" compensation", StringComparison.Ordinal) == true;

    /// <summary>Holds every worker in a timed (never inlined) wait on <paramref name="gate"/>; returns once all are held.</summary>
    private static Task[] HoldEveryWorker(WorkStealingTaskScheduler scheduler, ManualResetEventSlim gate)
    {
        var rendezvous = new Barrier(scheduler.WorkerCount);
        using var held = new CountdownEvent(scheduler.WorkerCount);
        Task[] holders = [.. Enumerable.Range(0, scheduler.WorkerCount).Select(_ => scheduler.Factory.StartNew(() =>
        {
            rendezvous.SignalAndWait(Bound).Should().BeTrue("each worker takes one holder");
            held.Signal();
            gate.Wait(Bound).Should().BeTrue("the gate opens before the bound");
        }))];
        held.Wait(Bound).Should().BeTrue("every worker is held");
        return holders;
    }

    private static async Task WaitUntil(Func<bool> condition, string what, TimeSpan? bound = null)
    {
        var clock = Stopwatch.StartNew();
        while (!condition())
        {
            clock.Elapsed.Should().BeLessThan(bound ?? Bound, what);
            await Task.Delay(5);
        }
    }

    private sealed class CompensatedFailure(string message) : InvalidOperationException(message);

    // ---------------------------------------------------------------------------------------------------------------
    // Dispose from work that runs on a compensation thread.
    // ---------------------------------------------------------------------------------------------------------------

    // Dispose "called on one of this scheduler's workers does not wait (a thread cannot join itself); the workers finish
    // the queued work and exit on their own". Work cannot choose where it runs: while the workers are blocked, the same
    // task runs on a compensation thread instead, which is no worker, so Dispose joins the workers, and the workers'
    // shutdown waits for compensation threads — including this one, stuck in the join.
    [Fact]
    public async Task Dispose_called_by_a_task_that_runs_on_a_compensation_thread_returns()
    {
        WorkStealingTaskScheduler scheduler = Create("CA");
        using var gate = new ManualResetEventSlim();
        Task[] holders = HoldEveryWorker(scheduler, gate);
        bool? onCompensation = null;
        Task disposer = scheduler.Factory.StartNew(() =>
        {
            onCompensation = OnCompensationThread();
            gate.Set();
            scheduler.Dispose(); // on a worker this returns at once; the workers then drain and exit
        });

        await disposer.WithTimeout("a task calling Dispose on a compensation thread (it joins workers that wait for it)", Bound);
        onCompensation.Should().BeTrue("the workers were held, so a compensation thread ran it");
        await Task.WhenAll(holders).WithTimeout("the holders", Bound);
        await scheduler.DisposeAsync().AsTask().WithTimeout("the workers' exit", Bound);
    }

    // ---------------------------------------------------------------------------------------------------------------
    // Thread.Interrupt left pending by an item.
    // ---------------------------------------------------------------------------------------------------------------

    // "A worker that parks drops an interrupt still pending: the task it was meant for has finished" and the protocol's own
    // waits never throw it. An item that interrupts its own thread on a compensation thread leaves the interrupt for the
    // compensation loop's own spin (SpinWait reaches Thread.Sleep(0)), which throws it out of the loop: the carrier
    // faults and the scheduler raises ThreadInterruptedException as unhandled (the process ends by default).
    [Fact]
    public async Task An_interrupt_left_pending_by_an_item_does_not_escape_the_compensation_loop()
    {
        var raised = new ConcurrentQueue<Exception>();
        using UnhandledExceptions.Tolerated interrupts = UnhandledExceptions.Tolerate(e =>
        {
            if (e is ThreadInterruptedException)
            {
                raised.Enqueue(e);
                return true;
            }

            return false;
        });
        WorkStealingTaskScheduler scheduler = Create("CB");
        using var disposeScheduler = SchedulerTestHelpers.DisposeBoundedOnExit(scheduler);
        using var gate = new ManualResetEventSlim();
        Task[] holders = HoldEveryWorker(scheduler, gate);
        Thread? compensationThread = null;
        bool onCompensation = false;
        Task interrupter = scheduler.Factory.StartNew(() =>
        {
            onCompensation = OnCompensationThread();
            compensationThread = Thread.CurrentThread;
            Thread.CurrentThread.Interrupt(); // meant for a wait that this item ended up not doing
        });

        await interrupter.WithTimeout("the interrupting item", Bound);
        onCompensation.Should().BeTrue("the workers were held");
        compensationThread!.Join(Bound).Should().BeTrue("the compensation thread leaves once nothing is queued");
        gate.Set();
        await Task.WhenAll(holders).WithTimeout("the holders", Bound);

        // Whatever the loop raised was queued before its thread ended; give the ThreadPool a moment to throw it.
        var clock = Stopwatch.StartNew();
        while (!interrupts.Seen && clock.Elapsed < TimeSpan.FromSeconds(1))
        {
            await Task.Delay(10);
        }

        foreach (Exception e in raised)
        {
            output.WriteLine($"raised as unhandled: {e}");
        }

        interrupts.SeenCount.Should().Be(0, "the interrupt belonged to the finished item, not to the compensation loop");
    }

    // ---------------------------------------------------------------------------------------------------------------
    // Unhandled exceptions of callbacks run by a compensation thread.
    // ---------------------------------------------------------------------------------------------------------------

    // "An item's exception is raised as unhandled, as on a worker": each exactly once, and the compensation thread lives on
    // to run the rest of the queue.
    [Fact]
    public async Task Throwing_callbacks_on_a_compensation_thread_are_raised_once_each_and_the_thread_runs_the_rest()
    {
        string tag = Guid.NewGuid().ToString("N");
        using UnhandledExceptions.Tolerated failures = UnhandledExceptions.Tolerate(e => e is CompensatedFailure && e.Message.StartsWith(tag, StringComparison.Ordinal));
        WorkStealingTaskScheduler scheduler = Create("CC");
        using var disposeScheduler = SchedulerTestHelpers.DisposeBoundedOnExit(scheduler);
        using var gate = new ManualResetEventSlim();
        Task[] holders = HoldEveryWorker(scheduler, gate);
        const int Callbacks = 12;
        var threads = new ConcurrentDictionary<int, int>();
        var compensated = new bool[Callbacks];
        using var allRan = new CountdownEvent(Callbacks);
        for (int i = 0; i < Callbacks; i++)
        {
            scheduler.PipeScheduler.Schedule(
                state =>
                {
                    int index = (int)state!;
                    compensated[index] = OnCompensationThread();
                    threads[Environment.CurrentManagedThreadId] = 0;
                    allRan.Signal();
                    if (index % 3 == 0)
                    {
                        throw new CompensatedFailure($"{tag} #{index}");
                    }
                },
                i);
        }

        allRan.Wait(Bound).Should().BeTrue("a compensation thread runs every callback, the throwing ones included");
        compensated.Should().OnlyContain(c => c, "the workers were held");
        threads.Should().HaveCount(1, "one compensation thread runs the whole queue; a throwing callback does not end it");
        await WaitUntil(() => failures.SeenCount >= Callbacks / 3, "each failure is raised as unhandled");
        gate.Set();
        await Task.WhenAll(holders).WithTimeout("the holders", Bound);
        await Task.Delay(100);
        failures.SeenCount.Should().Be(Callbacks / 3, "each failure raised exactly once");
    }

    // ---------------------------------------------------------------------------------------------------------------
    // Contexts left behind by an item.
    // ---------------------------------------------------------------------------------------------------------------

    // "The thread's contexts are put back" after every item (RunCompensated), as a worker does: an AsyncLocal value, the
    // culture (an AsyncLocal too) and a SynchronizationContext left by one callback are not seen by the next.
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task Contexts_left_by_one_item_on_a_compensation_thread_are_not_seen_by_the_next(bool context)
    {
        WorkStealingTaskScheduler scheduler = Create("CD", context: context);
        using var disposeScheduler = SchedulerTestHelpers.DisposeBoundedOnExit(scheduler);
        using var gate = new ManualResetEventSlim();
        Task[] holders = HoldEveryWorker(scheduler, gate);
        var local = new AsyncLocal<string?>();
        SynchronizationContext? expectedContext = null;
        var seen = new ConcurrentQueue<(int Thread, string? Local, string Culture, SynchronizationContext? Context, bool Compensated)>();
        using var done = new CountdownEvent(6);
        local.Value = "the scheduling thread's"; // pipe callbacks run in the loop's own context, not the scheduling thread's
        for (int i = 0; i < 6; i++)
        {
            scheduler.PipeScheduler.Schedule(
                state =>
                {
                    int index = (int)state!;
                    seen.Enqueue((Environment.CurrentManagedThreadId, local.Value, CultureInfo.CurrentCulture.Name, SynchronizationContext.Current, OnCompensationThread()));
                    if (index == 0)
                    {
                        expectedContext = SynchronizationContext.Current; // the scheduler's (context mode) or none
                    }

                    local.Value = $"leaked by #{index}";
                    CultureInfo.CurrentCulture = new CultureInfo("fr-FR");
                    SynchronizationContext.SetSynchronizationContext(new SynchronizationContext());
                    done.Signal();
                },
                i);
        }

        local.Value = null;
        done.Wait(Bound).Should().BeTrue();
        gate.Set();
        await Task.WhenAll(holders).WithTimeout("the holders", Bound);
        seen.Should().OnlyContain(s => s.Compensated, "the workers were held");
        seen.Select(s => s.Thread).Distinct().Should().HaveCount(1, "one compensation thread ran them in a row");
        seen.Should().OnlyContain(s => s.Local == null, "no AsyncLocal value leaks from one item to the next");
        seen.Should().OnlyContain(s => s.Culture != "fr-FR", "no culture leaks from one item to the next");
        seen.Should().OnlyContain(s => ReferenceEquals(s.Context, expectedContext), "the SynchronizationContext is put back");
        (expectedContext is not null).Should().Be(context, "context mode gives compensated work the scheduler's context");
    }

    // ---------------------------------------------------------------------------------------------------------------
    // Overflow batches, exactly-once, statistics.
    // ---------------------------------------------------------------------------------------------------------------

    // A worker overflows its deque (batches of half a ring go to the global queue) and then blocks on its children with a
    // wait the BCL does not inline, as does its peer: compensation threads take the overflow batches from the global queue
    // (one item now, the rest back) and the deque's steal end. Each child runs exactly once, nothing stays counted as
    // queued, and TasksExecuted counts every task exactly once.
    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    public async Task Overflow_batches_taken_by_compensation_threads_run_each_item_once_and_statistics_add_up(int seed)
    {
        WorkStealingTaskScheduler scheduler = Create("CE", localQueueCapacity: 16);
        using var disposeScheduler = SchedulerTestHelpers.DisposeBoundedOnExit(scheduler);
        using var never = new CancellationTokenSource();
        var random = new Random(seed);
        int children = 300 + random.Next(0, 100);
        var runs = new int[2 * children];
        int compensatedRuns = 0;
        using var rendezvous = new Barrier(2);
        Task[] parents = [.. Enumerable.Range(0, 2).Select(p => scheduler.Factory.StartNew(() =>
        {
            rendezvous.SignalAndWait(Bound).Should().BeTrue();
            var spawned = new Task[children];
            for (int i = 0; i < children; i++)
            {
                int index = (p * children) + i;
                spawned[i] = Task.Factory.StartNew(
                    () =>
                    {
                        Interlocked.Increment(ref runs[index]);
                        if (OnCompensationThread())
                        {
                            Interlocked.Increment(ref compensatedRuns);
                        }
                    },
                    CancellationToken.None,
                    TaskCreationOptions.None,
                    scheduler);
            }

            Task.WaitAll(spawned, never.Token); // cancellable: never inlined
        }))];

        await Task.WhenAll(parents).WithTimeout("the parents", Bound);
        runs.Should().OnlyContain(n => n == 1, "each child exactly once");
        compensatedRuns.Should().BeGreaterThan(0, "both workers were joining, so compensation threads ran children");
        await WaitUntil(() => scheduler.LiveCompensationThreads == 0, "the compensation threads leave");
        await WaitUntil(
            () => scheduler.GetStatistics() is { QueuedTasks: 0 } statistics && statistics.TasksExecuted + statistics.TasksInlined >= (2 * children) + 2,
            "the counters catch up");
        SchedulerStatistics final = scheduler.GetStatistics();
        output.WriteLine($"{final}, {scheduler.CompensationThreadsStarted} compensation thread(s), {compensatedRuns} compensated runs");
        (final.TasksExecuted + final.TasksInlined).Should().Be((2 * children) + 2, "every task counted exactly once, wherever it ran");
        final.QueuedTasks.Should().Be(0, "an overflow batch requeued by a compensation thread is not counted twice");
    }

    // ---------------------------------------------------------------------------------------------------------------
    // Workers blocked for good.
    // ---------------------------------------------------------------------------------------------------------------

    // Workers blocked on something no queued work releases, and every queued item blocks on it too: compensation threads
    // come ever more slowly ((n + 1) × 100 ms after n), block, and use no CPU; once released, everything runs and the
    // compensation threads leave.
    [Fact]
    public async Task Workers_blocked_for_good_get_slowly_growing_compensation_threads_that_burn_no_cpu_and_leave_when_released()
    {
        WorkStealingTaskScheduler scheduler = Create("CF");
        using var disposeScheduler = SchedulerTestHelpers.DisposeBoundedOnExit(scheduler);
        using var gate = new ManualResetEventSlim();
        Task[] holders = HoldEveryWorker(scheduler, gate);
        var clock = Stopwatch.StartNew();
        Task[] blocked = [.. Enumerable.Range(0, 40).Select(_ => scheduler.Factory.StartNew(() => gate.Wait(Bound)))];

        await WaitUntil(() => scheduler.LiveCompensationThreads >= 2, "compensation threads come while the standstill lasts");
        ThreadCpu.Snapshot before = ThreadCpu.Take();
        await Task.Delay(1000);
        IReadOnlyList<ThreadCpu.Usage> used = ThreadCpu.Since(before);
        int live = scheduler.LiveCompensationThreads;
        TimeSpan elapsed = clock.Elapsed; // read after the count: a thread started in between only widens the bound
        output.WriteLine($"{live} compensation threads after {elapsed.TotalMilliseconds:F0} ms; {ThreadCpu.Describe(used)}");

        // n threads need 100 × (1 + 2 + … + n) ms of standstill: n (n + 1) / 2 ≤ elapsed / 100 ms.
        int most = (int)Math.Floor((Math.Sqrt(1 + (8 * elapsed.TotalMilliseconds / 100)) - 1) / 2);
        live.Should().BeLessThanOrEqualTo(most, "the n-th compensation thread waits n delays of standstill");
        scheduler.CompensationThreadsStarted.Should().Be(live, "none of the blocked compensation threads has left");
        ThreadCpu.Sum(used, n => n.StartsWith("CF ", StringComparison.Ordinal)).Should().BeLessThan(50, "blocked compensation threads and workers use no CPU");

        gate.Set();
        await Task.WhenAll(holders.Concat(blocked)).WithTimeout("everything, once released", Bound);
        await WaitUntil(() => scheduler.LiveCompensationThreads == 0, "the compensation threads leave once released");
    }

    // After compensated work ends, nothing of the scheduler runs: no compensation thread is left and the scheduler's
    // threads use no CPU ("no thread while idle").
    [Fact]
    public async Task After_compensated_work_ends_no_compensation_thread_is_left_and_the_scheduler_uses_no_cpu()
    {
        WorkStealingTaskScheduler scheduler = Create("CG");
        using var disposeScheduler = SchedulerTestHelpers.DisposeBoundedOnExit(scheduler);
        using var gate = new ManualResetEventSlim();
        Task[] holders = HoldEveryWorker(scheduler, gate);
        Task[] work = [.. Enumerable.Range(0, 20).Select(i => scheduler.Factory.StartNew(() =>
        {
            if (i == 19)
            {
                gate.Set();
            }
        }))];

        await Task.WhenAll(holders.Concat(work)).WithTimeout("the work", Bound);
        scheduler.CompensationThreadsStarted.Should().BeGreaterThan(0);
        await WaitUntil(() => scheduler.LiveCompensationThreads == 0, "the compensation threads leave");
        await WaitUntil(() => !scheduler.IsWatchdogArmed, "the watchdog disarms once every worker is idle");

        // The live count drops a few steps before the thread ends (it wakes the workers, then exits): wait for the OS
        // thread itself, or one still on its way out, held off its core on a loaded machine, reads as left behind below.
        await WaitUntil(() => !ThreadCpu.Take().Values.Any(t => t.Name == "CG compensation"), "the compensation threads end");
        ThreadCpu.Snapshot before = ThreadCpu.Take();
        await Task.Delay(500);
        IReadOnlyList<ThreadCpu.Usage> used = ThreadCpu.Since(before);
        output.WriteLine(ThreadCpu.Describe(used));
        used.Should().NotContain(u => u.Name == "CG compensation", "no compensation thread is left");
        ThreadCpu.Sum(used, n => n.StartsWith("CG ", StringComparison.Ordinal)).Should().BeLessThan(10, "an idle scheduler uses no CPU");
    }

    // ---------------------------------------------------------------------------------------------------------------
    // DisposeAsync racing compensation.
    // ---------------------------------------------------------------------------------------------------------------

    // DisposeAsync while compensation threads run work that spawns more on the scheduler: the spawns are accepted (no
    // ObjectDisposedException into the running work), everything runs before DisposeAsync completes, and nothing after.
    [Theory]
    [InlineData(0)]
    [InlineData(1)]
    [InlineData(2)]
    public async Task DisposeAsync_during_compensation_runs_everything_spawned_meanwhile_and_nothing_after(int seed)
    {
        var random = new Random(seed);
        WorkStealingTaskScheduler scheduler = Create("CH");
        using var gate = new ManualResetEventSlim();
        Task[] holders = HoldEveryWorker(scheduler, gate);
        int ran = 0;
        var failures = new ConcurrentQueue<Exception>();
        const int Parents = 10;
        const int ChildrenEach = 3;
        using var parentsStarted = new CountdownEvent(1);
        for (int p = 0; p < Parents; p++)
        {
            bool last = p == Parents - 1;
            _ = scheduler.Factory.StartNew(() =>
            {
                if (parentsStarted.CurrentCount > 0)
                {
                    parentsStarted.Signal();
                }

                Thread.Sleep(random.Next(0, 20));
                for (int c = 0; c < ChildrenEach; c++)
                {
                    try
                    {
                        Task.Factory.StartNew(() => Interlocked.Increment(ref ran), CancellationToken.None, TaskCreationOptions.None, scheduler);
                        scheduler.Factory.StartNew(() => Interlocked.Increment(ref ran));
                    }
                    catch (Exception e)
                    {
                        failures.Enqueue(e);
                    }
                }

                Interlocked.Increment(ref ran);
                if (last)
                {
                    gate.Set();
                }
            });
        }

        parentsStarted.Wait(Bound).Should().BeTrue("a compensation thread starts on the parents");
        Task disposing = scheduler.DisposeAsync().AsTask();
        await disposing.WithTimeout("DisposeAsync", Bound);
        int atDispose = Volatile.Read(ref ran);
        failures.Should().BeEmpty("work of the scheduler may spawn on it while it drains, wherever it runs");
        atDispose.Should().Be(Parents * ((2 * ChildrenEach) + 1), "everything queued and spawned ran before DisposeAsync completed");
        scheduler.LiveCompensationThreads.Should().Be(0);
        holders.Should().OnlyContain(h => h.IsCompleted);
        await Task.Delay(50);
        Volatile.Read(ref ran).Should().Be(atDispose, "nothing runs after DisposeAsync completed");
    }

    // ---------------------------------------------------------------------------------------------------------------
    // Many schedulers, LongRunning, wakers, synchronization context.
    // ---------------------------------------------------------------------------------------------------------------

    // Several schedulers deadlocked at once on the one watchdog thread: each gets its compensation, none waits for another.
    [Fact]
    public async Task Many_schedulers_blocked_at_once_each_get_their_own_compensation()
    {
        WorkStealingTaskScheduler[] schedulers = [.. Enumerable.Range(0, 6).Select(i => Create("CI", workers: 1 + (i % 2)))];
        try
        {
            var gates = schedulers.Select(_ => new ManualResetEventSlim()).ToArray();
            Task[][] holders = [.. schedulers.Select((s, i) => HoldEveryWorker(s, gates[i]))];
            var ranOn = new ConcurrentDictionary<int, WorkStealingTaskScheduler>();
            Task[] releasers = [.. schedulers.Select((s, i) => s.Factory.StartNew(() =>
            {
                TaskScheduler.Current.Should().BeSameAs(s);
                gates[i].Set();
            }))];
            await Task.WhenAll(releasers.Concat(holders.SelectMany(h => h))).WithTimeout("every scheduler's releaser", Bound);
            schedulers.Should().OnlyContain(s => s.CompensationThreadsStarted > 0);
            foreach (ManualResetEventSlim gate in gates)
            {
                gate.Dispose();
            }
        }
        finally
        {
            foreach (WorkStealingTaskScheduler scheduler in schedulers)
            {
                SchedulerTestHelpers.DisposeBounded(scheduler);
            }
        }
    }

    // "LongRunning runs on a dedicated thread, never blocking a worker": started from a compensation thread too, and a
    // compensation thread waiting for it does not run it itself.
    [Fact]
    public async Task A_LongRunning_task_started_and_awaited_on_a_compensation_thread_runs_on_its_own_thread()
    {
        WorkStealingTaskScheduler scheduler = Create("CJ");
        using var disposeScheduler = SchedulerTestHelpers.DisposeBoundedOnExit(scheduler);
        using var gate = new ManualResetEventSlim();
        Task[] holders = HoldEveryWorker(scheduler, gate);
        string? longRunningThread = null;
        bool starterCompensated = false;
        Task starter = scheduler.Factory.StartNew(() =>
        {
            starterCompensated = OnCompensationThread();
            Task longRunning = scheduler.Factory.StartNew(
                () =>
                {
                    longRunningThread = Thread.CurrentThread.Name;
                    gate.Set();
                },
                TaskCreationOptions.LongRunning);
            longRunning.Wait(Bound).Should().BeTrue();
        });

        await Task.WhenAll(holders.Append(starter)).WithTimeout("the LongRunning release", Bound);
        starterCompensated.Should().BeTrue();
        longRunningThread.Should().Be("CJ LongRunning");
    }

    // A pooled waker awaited on a compensation thread and completed from a foreign thread resumes on the scheduler
    // (docs/wakers.md: under the scheduler but not on a worker, to its global queue), exactly once.
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task A_waker_awaited_on_a_compensation_thread_resumes_on_the_scheduler(bool context)
    {
        WorkStealingTaskScheduler scheduler = Create("CK", context: context);
        using var disposeScheduler = SchedulerTestHelpers.DisposeBoundedOnExit(scheduler);
        using var gate = new ManualResetEventSlim();
        Task[] holders = HoldEveryWorker(scheduler, gate);
        PooledValueTaskSource<int> source = PooledValueTaskSource<int>.Rent();
        int resumed = 0;
        bool awaitedOnCompensation = false;
        Task<(TaskScheduler Current, int Value)> awaiter = scheduler.Factory.StartNew(async () =>
        {
            awaitedOnCompensation = OnCompensationThread();
            int value = await source.Task;
            Interlocked.Increment(ref resumed);
            return (TaskScheduler.Current, value);
        }).Unwrap();

        await WaitUntil(() => awaitedOnCompensation, "the await on a compensation thread");
        var completer = new Thread(() => source.TrySetResult(42)) { IsBackground = true };
        completer.Start();
        var (current, result) = await awaiter.WithTimeout("the resumption", Bound);
        current.Should().BeSameAs(scheduler, "the continuation came back to the scheduler");
        result.Should().Be(42);
        gate.Set();
        await Task.WhenAll(holders).WithTimeout("the holders", Bound);
        resumed.Should().Be(1);
    }

    // ---------------------------------------------------------------------------------------------------------------
    // Spawning during the drain from a compensation thread.
    // ---------------------------------------------------------------------------------------------------------------

    // "Work already running may still queue continuations while the scheduler drains; they run before the workers exit."
    // On a worker every spawn on the scheduler is accepted after Dispose (the caller is on a worker); a task that runs
    // without exposing its scheduler (HideScheduler) and spawns on it explicitly is this scheduler's work all the same. On a
    // compensation thread the spawn goes through the outside producers' check (TaskScheduler.Current is Default there),
    // so the same task is refused with ObjectDisposedException or accepted depending on which thread happened to run it.
    [Fact]
    public async Task A_HideScheduler_task_on_a_compensation_thread_may_spawn_on_the_scheduler_while_it_drains()
    {
        WorkStealingTaskScheduler scheduler = Create("CL");
        using var gate = new ManualResetEventSlim();
        using var disposeRequested = new ManualResetEventSlim();
        Task[] holders = HoldEveryWorker(scheduler, gate);
        Exception? refusal = null;
        bool onCompensation = false;
        int childRan = 0;
        Task hidden = scheduler.Factory.StartNew(
            () =>
            {
                onCompensation = OnCompensationThread();
                disposeRequested.Wait(Bound).Should().BeTrue();
                try
                {
                    Task.Factory.StartNew(() => Interlocked.Increment(ref childRan), CancellationToken.None, TaskCreationOptions.None, scheduler);
                }
                catch (Exception e)
                {
                    refusal = e;
                }
                finally
                {
                    gate.Set();
                }
            },
            TaskCreationOptions.HideScheduler);

        await WaitUntil(() => Volatile.Read(ref onCompensation), "the hidden task starts on a compensation thread");
        Task disposing = scheduler.DisposeAsync().AsTask();
        disposeRequested.Set();
        await Task.WhenAll(holders.Append(hidden)).WithTimeout("the hidden task", Bound);
        await disposing.WithTimeout("DisposeAsync", Bound);
        refusal.Should().BeNull("the scheduler's own running work may spawn on it while it drains, as it may on a worker");
        childRan.Should().Be(1);
    }

    // The control for the test above: the same HideScheduler task run by a worker spawns on the draining scheduler fine.
    [Fact]
    public async Task A_HideScheduler_task_on_a_worker_may_spawn_on_the_scheduler_while_it_drains()
    {
        WorkStealingTaskScheduler scheduler = Create("CM", workers: 1);
        using var disposeRequested = new ManualResetEventSlim();
        Exception? refusal = null;
        bool onWorker = false;
        int childRan = 0;
        Task hidden = scheduler.Factory.StartNew(
            () =>
            {
                onWorker = scheduler.IsWorkerThread;
                disposeRequested.Wait(Bound).Should().BeTrue();
                try
                {
                    Task.Factory.StartNew(() => Interlocked.Increment(ref childRan), CancellationToken.None, TaskCreationOptions.None, scheduler);
                }
                catch (Exception e)
                {
                    refusal = e;
                }
            },
            TaskCreationOptions.HideScheduler);

        await WaitUntil(() => Volatile.Read(ref onWorker), "the hidden task starts on the worker");
        Task disposing = scheduler.DisposeAsync().AsTask();
        disposeRequested.Set();
        await hidden.WithTimeout("the hidden task", Bound);
        await disposing.WithTimeout("DisposeAsync", Bound);
        refusal.Should().BeNull();
        childRan.Should().Be(1);
    }

    // Continuations posted to busy workers' inboxes (PreferFairness spawns from a worker go there), then every worker joins
    // them with a wait the BCL does not inline: compensation threads take them from the inboxes while the owners, and the
    // other compensation threads, race for the same queues. Each runs exactly once.
    [Theory]
    [InlineData(0)]
    [InlineData(1)]
    [InlineData(2)]
    public async Task Inbox_work_of_joining_workers_taken_by_compensation_runs_each_item_once(int seed)
    {
        WorkStealingTaskScheduler scheduler = Create("CN");
        using var disposeScheduler = SchedulerTestHelpers.DisposeBoundedOnExit(scheduler);
        using var never = new CancellationTokenSource();
        var random = new Random(seed);
        int perWorker = 50 + random.Next(0, 50);
        var runs = new int[2 * perWorker];
        using var rendezvous = new Barrier(2);
        Task[] parents = [.. Enumerable.Range(0, 2).Select(p => scheduler.Factory.StartNew(() =>
        {
            rendezvous.SignalAndWait(Bound).Should().BeTrue();
            var spawned = new Task[perWorker];
            for (int i = 0; i < perWorker; i++)
            {
                int index = (p * perWorker) + i;
                spawned[i] = Task.Factory.StartNew(
                    () =>
                    {
                        Interlocked.Increment(ref runs[index]);
                        if (index % 7 == 0)
                        {
                            Thread.SpinWait(random.Next(0, 2000));
                        }
                    },
                    CancellationToken.None,
                    TaskCreationOptions.PreferFairness,
                    scheduler);
            }

            Task.WaitAll(spawned, never.Token);
        }))];

        await Task.WhenAll(parents).WithTimeout("the parents", Bound);
        runs.Should().OnlyContain(n => n == 1, "each inbox item exactly once");
        await WaitUntil(() => scheduler.LiveCompensationThreads == 0, "the compensation threads leave");
    }

    // Context mode: SynchronizationContext.Send from work on a compensation thread is not run inline there (it is no
    // worker): it is posted and waited for, which with every worker held needs a further compensation thread. It must
    // still complete (documented: a blocking wait on a compensation thread waits for the next one).
    [Fact]
    public async Task Send_of_the_scheduler_context_from_a_compensation_thread_completes()
    {
        WorkStealingTaskScheduler scheduler = Create("CO", context: true);
        using var disposeScheduler = SchedulerTestHelpers.DisposeBoundedOnExit(scheduler);
        using var gate = new ManualResetEventSlim();
        Task[] holders = HoldEveryWorker(scheduler, gate);
        bool sent = false;
        Task sender = scheduler.Factory.StartNew(() =>
        {
            SynchronizationContext.Current.Should().NotBeNull();
            SynchronizationContext.Current!.Send(_ => sent = true, null);
            gate.Set();
        });

        await Task.WhenAll(holders.Append(sender)).WithTimeout("Send from a compensation thread", Bound);
        sent.Should().BeTrue();
    }
}
