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
        using var scheduler = Create(lifoLimit: 3, fairness: 61);
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
        using var scheduler = Create(lifoLimit: 0, fairness: 1);
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
    public void A_global_batch_met_while_moving_outside_work_into_the_deque_needs_no_spill()
    {
        // The worker's deque is empty and the global queue holds 15 plain items and then an overflow batch (8): moving
        // them all in used to overflow the 16-slot deque and spill in the worker's loop, where a failure ended the worker.
        using var scheduler = Create(lifoLimit: 3, fairness: 10_000);
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
        using var scheduler = Create(lifoLimit: 3, fairness: 61);
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
        using var scheduler = Create(lifoLimit: 3, fairness: 61);
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

        public void SpawnAll()
        {
            for (int i = 0; i < _runs.Length; i++)
            {
                int index = i;
                try
                {
                    _tasks[i] = Task.Factory.StartNew(() => Interlocked.Increment(ref _runs[index]), CancellationToken.None, TaskCreationOptions.None, scheduler);
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
