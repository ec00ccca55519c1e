using System.Diagnostics;
using Scheduler.Native;
using Scheduler.Tests.IO;

namespace Scheduler.Tests.Scheduling;

/// <summary>
/// An allocation that fails (<see cref="OutOfMemoryException"/>, injected through <see cref="FaultInjection.HookForTests"/>
/// where a queue could allocate) fails at most the item its call was queuing, with the exception to that caller. What
/// was queued before is never lost, and the scheduler goes on working: no worker dies, the counters stay right, Dispose
/// drains and joins. The hook is process-wide: each test filters by its own scheduler's worker threads (or its own
/// thread) and fails one call only; the tests share the fault-injection collection, which runs alone.
/// </summary>
[Collection(nameof(FaultInjectionGroup))]
public sealed class PushFailureTests
{
    private static readonly TimeSpan Timeout = SchedulerTestHelpers.Timeout;

    [Theory]
    [InlineData("batch-enqueue")] // the spilled half is out of the deque when the global queue refuses it
    [InlineData("batch-rent")] // nothing taken yet, but the item the new one displaced from the LIFO slot is in hand
    public void A_spill_that_fails_on_a_worker_loses_nothing_queued_before_and_fails_only_the_new_task(string point)
    {
        var scheduler = Create(lifoLimit: 3, fairness: 61);
        using var disposeScheduler = SchedulerTestHelpers.DisposeBoundedOnExit(scheduler);
        var run = new Spawner(scheduler, children: 40);
        int armed = 1;
        using Injection injection = Inject(name => name == point && scheduler.IsWorkerThread && Interlocked.Exchange(ref armed, 0) == 1);

        scheduler.Factory.StartNew(run.SpawnAll).Wait(Timeout).Should().BeTrue();

        // 16 in the deque and one in the LIFO slot: the 18th push displaces the 17th into a full deque, which spills (a
        // watchdog rescue of the slot, should the parent stall, moves that by one).
        run.Failed.Should().ContainSingle("one spill failed, and only the push that caused it fails");
        run.Failures.Should().ContainSingle().Which.Should().BeOfType<TaskSchedulerException>()
            .Which.InnerException.Should().BeOfType<OutOfMemoryException>();
        run.AssertEachAcceptedChildRunsOnce();
        AssertStillWorksAndDisposes(scheduler);
    }

    [Fact]
    public void A_batch_remainder_that_the_global_queue_refuses_stays_with_the_worker_that_dequeued_it()
    {
        // No LIFO slot, a fairness turn at every look: once the parent is done, the worker's first look takes the oldest
        // overflow batch from the global queue while its own deque is full, so the batch's remainder goes back there.
        var scheduler = Create(lifoLimit: 0, fairness: 1);
        using var disposeScheduler = SchedulerTestHelpers.DisposeBoundedOnExit(scheduler);
        var run = new Spawner(scheduler, children: 32); // 16 + 8k children leave the deque full after the spills
        int armed = 0;
        run.AfterSpawning = () => Volatile.Write(ref armed, 1); // the spills above succeed; the remainder's enqueue fails
        using Injection injection = Inject(name => name == "batch-enqueue" && scheduler.IsWorkerThread && Interlocked.Exchange(ref armed, 0) == 1);

        scheduler.Factory.StartNew(run.SpawnAll).Wait(Timeout).Should().BeTrue();

        run.Failed.Should().BeEmpty("the failing enqueue ran in the worker's loop, on behalf of nobody");
        run.AssertEachAcceptedChildRunsOnce();
        Volatile.Read(ref armed).Should().Be(0, "the remainder's enqueue was attempted (and failed)");
        AssertStillWorksAndDisposes(scheduler);
    }

    [Fact]
    public void A_batch_remainder_held_by_a_worker_that_then_blocks_still_runs()
    {
        // As above, but the batch's first item (child 0) blocks until the rest of that batch (children 1-7, the remainder
        // the worker now holds) has run. The held remainder was private to its worker: no peer, compensation thread or
        // rescue could see it, so child 0 waited for good (here, its bound). Now the watchdog's rescue of a blocked
        // worker moves it to the global queue, where a compensation thread runs it: a watchdog look or two and the
        // compensation delay, milliseconds that a loaded machine can stretch to seconds, hence a bound of half the
        // test's timeout (the wait for every child, child 0 among them, is the whole of it).
        var scheduler = Create(lifoLimit: 0, fairness: 1);
        using var disposeScheduler = SchedulerTestHelpers.DisposeBoundedOnExit(scheduler);
        var run = new Spawner(scheduler, children: 32);
        using var restOfTheBatch = new CountdownEvent(7);
        bool firstSawTheRest = false;
        run.Body = i =>
        {
            if (i == 0)
            {
                firstSawTheRest = restOfTheBatch.Wait(Timeout / 2); // a timed wait: nothing is inlined
            }
            else if (i < 8)
            {
                restOfTheBatch.Signal();
            }
        };
        int armed = 0;
        run.AfterSpawning = () => Volatile.Write(ref armed, 1);
        using Injection injection = Inject(name => name == "batch-enqueue" && scheduler.IsWorkerThread && Interlocked.Exchange(ref armed, 0) == 1);

        scheduler.Factory.StartNew(run.SpawnAll).Wait(Timeout).Should().BeTrue();

        run.AssertEachAcceptedChildRunsOnce();
        Volatile.Read(ref armed).Should().Be(0, "the remainder's enqueue was attempted (and failed)");
        firstSawTheRest.Should().BeTrue("the remainder the blocked worker held ran elsewhere");
        scheduler.BlockedQueueRescues.Should().BePositive("the watchdog moved the held remainder out");
        AssertStillWorksAndDisposes(scheduler);
    }

    [Fact]
    public void A_global_batch_met_while_moving_outside_work_into_the_deque_needs_no_spill()
    {
        // The worker's deque is empty and the global queue holds 15 plain items and then an overflow batch (8): moving
        // them all in used to overflow the 16-slot deque and spill in the worker's loop, where a failure ended the worker.
        var scheduler = Create(lifoLimit: 3, fairness: 10_000);
        using var disposeScheduler = SchedulerTestHelpers.DisposeBoundedOnExit(scheduler);
        var run = new Spawner(scheduler, children: 18); // the 18th displaces the 17th into a full deque: one spill of 8
        var outside = new int[15];
        using var started = new ManualResetEventSlim();
        using var spawn = new ManualResetEventSlim();
        int armed = 0;
        run.AfterSpawning = () => Volatile.Write(ref armed, 1);
        using Injection injection = Inject(name => name == "batch-enqueue" && scheduler.IsWorkerThread && Interlocked.Exchange(ref armed, 0) == 1);

        Task parent = scheduler.Factory.StartNew(() =>
        {
            started.Set();
            spawn.Wait(Timeout);
            run.SpawnAll();
        });
        started.Wait(Timeout).Should().BeTrue();
        var outsideTasks = new Task[outside.Length];
        for (int i = 0; i < outside.Length; i++)
        {
            int index = i;
            outsideTasks[i] = scheduler.Factory.StartNew(() => Interlocked.Increment(ref outside[index]));
        }

        spawn.Set();
        parent.Wait(Timeout).Should().BeTrue();
        run.AssertEachAcceptedChildRunsOnce();
        Task.WaitAll(outsideTasks, Timeout).Should().BeTrue("the outside tasks run");
        outside.Should().AllSatisfy(n => n.Should().Be(1));
        Interlocked.Exchange(ref armed, 0).Should().Be(1, "the worker's loop spilled nothing");
        AssertStillWorksAndDisposes(scheduler);
    }

    [Fact]
    public void An_outside_producer_whose_enqueue_fails_sees_it_and_nothing_else_is_lost()
    {
        var scheduler = Create(lifoLimit: 3, fairness: 61);
        using var disposeScheduler = SchedulerTestHelpers.DisposeBoundedOnExit(scheduler);
        var testThread = Environment.CurrentManagedThreadId;
        int armed = 0;
        using Injection injection = Inject(name => name == "global-enqueue" && Environment.CurrentManagedThreadId == testThread && Interlocked.Exchange(ref armed, 0) == 1);
        var runs = new int[3];
        Task first = scheduler.Factory.StartNew(() => Interlocked.Increment(ref runs[0]));
        Volatile.Write(ref armed, 1);
        Action failing = () => scheduler.Factory.StartNew(() => Interlocked.Increment(ref runs[1]));
        failing.Should().Throw<TaskSchedulerException>().WithInnerException<OutOfMemoryException>();
        Task third = scheduler.Factory.StartNew(() => Interlocked.Increment(ref runs[2]));

        Task.WaitAll([first, third], Timeout).Should().BeTrue();
        runs.Should().Equal(1, 0, 1);
        AssertStillWorksAndDisposes(scheduler);
    }

    [Fact]
    public void A_fair_push_whose_inbox_enqueue_fails_fails_that_task_only()
    {
        var scheduler = Create(lifoLimit: 3, fairness: 61);
        using var disposeScheduler = SchedulerTestHelpers.DisposeBoundedOnExit(scheduler);
        int armed = 1;
        using Injection injection = Inject(name => name == "inbox-enqueue" && scheduler.IsWorkerThread && Interlocked.Exchange(ref armed, 0) == 1);
        var runs = new int[3];
        Exception? failure = null;
        Task[] accepted = scheduler.Factory.StartNew(() =>
        {
            var tasks = new List<Task> { Task.Factory.StartNew(() => Interlocked.Increment(ref runs[0]), CancellationToken.None, TaskCreationOptions.None, scheduler) };
            try
            {
                Task.Factory.StartNew(() => Interlocked.Increment(ref runs[1]), CancellationToken.None, TaskCreationOptions.PreferFairness, scheduler);
            }
            catch (TaskSchedulerException e)
            {
                failure = e;
            }

            tasks.Add(Task.Factory.StartNew(() => Interlocked.Increment(ref runs[2]), CancellationToken.None, TaskCreationOptions.PreferFairness, scheduler));
            return tasks.ToArray();
        }).Result;

        failure.Should().NotBeNull();
        failure!.InnerException.Should().BeOfType<OutOfMemoryException>();
        Task.WaitAll(accepted, Timeout).Should().BeTrue();
        runs.Should().Equal(1, 0, 1);
        AssertStillWorksAndDisposes(scheduler);
    }

    [Fact]
    public void A_lifo_rescue_whose_global_enqueue_fails_is_retried_after_a_pause_and_the_watchdog_survives()
    {
        // The parent's only child waits in its worker's LIFO slot while the parent blocks on it: only the watchdog's rescue
        // (slot to global queue) lets the idle peer run it. The rescue's first three enqueues fail; the item was taken out
        // of the slot already, so the watchdog must keep it and offer it again (it used to be lost, and the exception ended
        // the watchdog thread, which took the process down), a watchdog period apart: a process out of memory gets no
        // thread spinning on it (session 48: without the pause the retries came microseconds apart).
        const int Refusals = 3;
        var scheduler = new WorkStealingTaskScheduler(new WorkStealingTaskSchedulerOptions { WorkerCount = 2, ThreadNamePrefix = "PushFailure" });
        using var disposeScheduler = SchedulerTestHelpers.DisposeBoundedOnExit(scheduler);
        var asked = new List<long>(); // the watchdog thread's enqueues: three refused, then the one accepted
        using Injection injection = Inject(name =>
        {
            if (name != "global-enqueue" || Thread.CurrentThread.Name != "WorkStealing watchdog")
            {
                return false;
            }

            lock (asked)
            {
                if (asked.Count > Refusals)
                {
                    return false;
                }

                asked.Add(Stopwatch.GetTimestamp());
                return asked.Count <= Refusals;
            }
        });
        using var childRan = new ManualResetEventSlim();

        Task<bool> parent = scheduler.Factory.StartNew(() =>
        {
            scheduler.Factory.StartNew(childRan.Set); // to the LIFO slot: no peer can take it without a rescue
            return childRan.Wait(Timeout);
        });

        parent.Wait(Timeout).Should().BeTrue();
        parent.Result.Should().BeTrue("the rescued child runs on the peer although the rescue's first enqueues failed");
        long[] times;
        lock (asked)
        {
            times = [.. asked];
        }

        times.Should().HaveCount(Refusals + 1, "the rescue's enqueue was refused three times, then accepted");
        for (int i = 1; i < times.Length; i++)
        {
            // Thread.Sleep(10 ms) sleeps at least that long; half of it leaves room for a coarse clock.
            Stopwatch.GetElapsedTime(times[i - 1], times[i]).Should().BeGreaterThan(WorkStealingTaskScheduler.WatchdogPeriod / 2, "attempt {0} waited a period before trying again", i + 1);
        }

        scheduler.LifoRescues.Should().BeGreaterThanOrEqualTo(1);
        AssertStillWorksAndDisposes(scheduler);
    }

    [Fact]
    public async Task An_await_resumption_the_thread_pool_refuses_after_the_workers_exited_still_runs()
    {
        // After Dispose the workers are gone and an await resumption (still accepted: it continues work in flight) is handed
        // to the ThreadPool. The hand-off allocates; when it fails, the item is already out of the global queue, so the
        // draining thread must run it rather than drop it (the awaiting method used to hang forever).
        var scheduler = Create(lifoLimit: 3, fairness: 61);
        var signal = new TaskCompletionSource(); // no RunContinuationsAsynchronously: the resumption is queued by SetResult
        int resumed = 0;
        Task awaiting = await scheduler.Factory.StartNew(async () =>
        {
            await signal.Task;
            Interlocked.Increment(ref resumed);
        }).WaitAsync(Timeout);
        SchedulerTestHelpers.DisposeBounded(scheduler); // joins, bounded: returns once the workers are gone
        scheduler.WorkerThreads.Should().AllSatisfy(t => t!.IsAlive.Should().BeFalse("Dispose joined the workers"));

        int testThread = Environment.CurrentManagedThreadId;
        int armed = 1;
        using (Inject(name => name == "threadpool-drain" && Environment.CurrentManagedThreadId == testThread && Interlocked.Exchange(ref armed, 0) == 1))
        {
            signal.SetResult();
        }

        Volatile.Read(ref armed).Should().Be(0, "the hand-off to the ThreadPool was attempted (and failed)");
        await awaiting.WaitAsync(Timeout);
        Volatile.Read(ref resumed).Should().Be(1);
    }

    [Fact]
    public async Task An_await_resumption_whose_push_fails_on_a_worker_still_resumes_the_method()
    {
        // The TPL swallows a scheduler's exception for an await resumption (the wrapper task just faults), so a failed push
        // would leave the awaiting method suspended for good. Here the resumption is queued from a worker whose deque is
        // full: the spill it needs fails.
        var scheduler = Create(lifoLimit: 3, fairness: 61);
        await using var disposeScheduler = SchedulerTestHelpers.DisposeWithin(scheduler);
        var signal = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously); // queued, never inlined
        int resumed = 0;
        Task awaiting = await scheduler.Factory.StartNew(async () =>
        {
            await signal.Task;
            Interlocked.Increment(ref resumed);
        }).WaitAsync(Timeout);

        var run = new Spawner(scheduler, children: 17); // 16 in the deque, one in the LIFO slot: the next push spills
        int armed = 0;
        run.AfterSpawning = () =>
        {
            Volatile.Write(ref armed, 1);
            signal.SetResult();
        };
        using Injection injection = Inject(name => name == "batch-enqueue" && scheduler.IsWorkerThread && Interlocked.Exchange(ref armed, 0) == 1);

        scheduler.Factory.StartNew(run.SpawnAll).Wait(Timeout).Should().BeTrue();

        Volatile.Read(ref armed).Should().Be(0, "the resumption's spill was attempted (and failed)");
        await awaiting.WaitAsync(Timeout);
        Volatile.Read(ref resumed).Should().Be(1);
        scheduler.GetStatistics().TasksInlined.Should().BePositive("the resumption ran inline on the worker whose push failed, and counts as inlined");
        run.Failed.Should().BeEmpty();
        run.AssertEachAcceptedChildRunsOnce();
        AssertStillWorksAndDisposes(scheduler);
    }

    [Fact]
    public async Task An_await_resumption_whose_global_enqueue_fails_off_the_workers_still_resumes_the_method()
    {
        var scheduler = Create(lifoLimit: 3, fairness: 61);
        await using var disposeScheduler = SchedulerTestHelpers.DisposeWithin(scheduler);
        var signal = new TaskCompletionSource();
        int resumed = 0;
        Task awaiting = await scheduler.Factory.StartNew(async () =>
        {
            await signal.Task;
            Interlocked.Increment(ref resumed);
        }).WaitAsync(Timeout);

        int completer = 0;
        int armed = 1;
        using (Inject(name => name == "global-enqueue" && Environment.CurrentManagedThreadId == Volatile.Read(ref completer) && Interlocked.Exchange(ref armed, 0) == 1))
        {
            var thread = new Thread(() =>
            {
                Volatile.Write(ref completer, Environment.CurrentManagedThreadId);
                signal.SetResult(); // a thread that is neither a worker nor the ThreadPool's: the resumption is queued
            });
            thread.Start();
            thread.Join(Timeout).Should().BeTrue();
        }

        Volatile.Read(ref armed).Should().Be(0, "the resumption's enqueue was attempted (and failed)");
        await awaiting.WaitAsync(Timeout);
        Volatile.Read(ref resumed).Should().Be(1);
        AssertStillWorksAndDisposes(scheduler);
    }

    private static WorkStealingTaskScheduler Create(int lifoLimit, int fairness) => new(new WorkStealingTaskSchedulerOptions
    {
        WorkerCount = 1,
        LocalQueueCapacity = 16,
        LifoSlotLimit = lifoLimit,
        FairnessInterval = fairness,
        ThreadNamePrefix = "PushFailure",
    });

    /// <summary>
    /// After the failure: every worker is alive and runs new work (spawning enough to overflow again), nothing is counted
    /// as queued any more, and Dispose drains and joins.
    /// </summary>
    private static void AssertStillWorksAndDisposes(WorkStealingTaskScheduler scheduler)
    {
        var again = new Spawner(scheduler, children: 100);
        scheduler.Factory.StartNew(again.SpawnAll).Wait(Timeout).Should().BeTrue("the scheduler still runs work");
        again.Failed.Should().BeEmpty();
        again.AssertEachAcceptedChildRunsOnce();
        scheduler.WorkerThreads.Should().AllSatisfy(t => t!.IsAlive.Should().BeTrue("no worker died of the failure"));
        SpinWait.SpinUntil(() => scheduler.GetStatistics().QueuedTasks == 0, Timeout);
        scheduler.GetStatistics().QueuedTasks.Should().Be(0, "the counters (a batch's surplus among them) are consistent");

        var dispose = Task.Run(scheduler.Dispose);
        dispose.Wait(Timeout).Should().BeTrue("Dispose drains and joins");
        scheduler.WorkerThreads.Should().AllSatisfy(t => t!.IsAlive.Should().BeFalse());
    }

    private static Injection Inject(Func<string, bool> fails)
    {
        FaultInjection.HookForTests = name => fails(name) ? 12 /* ENOMEM */ : 0;
        return new Injection();
    }

    private sealed class Injection : IDisposable
    {
        public void Dispose() => FaultInjection.HookForTests = null;
    }

    /// <summary>A parent that, on a worker, queues children that count their runs, and records which pushes threw.</summary>
    private sealed class Spawner(WorkStealingTaskScheduler scheduler, int children)
    {
        private readonly int[] _runs = new int[children];
        private readonly Task?[] _tasks = new Task?[children];

        public List<int> Failed { get; } = [];

        public List<Exception> Failures { get; } = [];

        public Action? AfterSpawning { get; set; }

        /// <summary>What child <c>i</c> does before it counts its run (nothing by default).</summary>
        public Action<int>? Body { get; set; }

        public void SpawnAll()
        {
            for (int i = 0; i < _runs.Length; i++)
            {
                int index = i;
                try
                {
                    _tasks[i] = Task.Factory.StartNew(
                        () =>
                        {
                            Body?.Invoke(index);
                            Interlocked.Increment(ref _runs[index]);
                        },
                        CancellationToken.None,
                        TaskCreationOptions.None,
                        scheduler);
                }
                catch (TaskSchedulerException e)
                {
                    Failed.Add(i);
                    Failures.Add(e);
                }
            }

            AfterSpawning?.Invoke();
        }

        public void AssertEachAcceptedChildRunsOnce()
        {
            Task[] accepted = [.. _tasks.Where(t => t is not null)!];
            bool all = Task.WaitAll(accepted, Timeout);
            int[] runs = [.. _runs];
            all.Should().BeTrue($"every accepted child runs (runs: {string.Join(",", runs)})");
            for (int i = 0; i < runs.Length; i++)
            {
                runs[i].Should().Be(Failed.Contains(i) ? 0 : 1, $"child {i} {(Failed.Contains(i) ? "failed to queue" : "was accepted")}");
            }
        }
    }
}
