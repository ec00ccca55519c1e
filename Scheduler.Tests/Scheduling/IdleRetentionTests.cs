using System.Collections.Concurrent;
using System.Runtime.CompilerServices;

namespace Scheduler.Tests.Scheduling;

/// <summary>
/// Once its workers have parked, the scheduler keeps no finished task alive: not in a deque slot a thief emptied, the
/// LIFO slot, an inbox, the global queue, a pooled batch or a worker's locals. A task kept alive keeps everything it
/// reaches (a state machine, a chain of promises), and a faulted one never reaches
/// <see cref="TaskScheduler.UnobservedTaskException"/>: a CI run lost one of 24 that way, to a deque slot that a pop
/// which lost the last item to a thief left pointing at it (see <see cref="DequeStolenSlotStressTests"/>). Each workload
/// takes a different path through the queues, and runs a few rounds so that steals and races happen in several places.
/// </summary>
/// <remarks>
/// The two workloads through the global queue found two more holders (session 46: in two of three full-suite runs a task
/// of a round stayed alive, never when run alone; a heap dump taken by the failing test named the roots). A worker parked
/// inside the frame that had run its last item, and the JIT reports some of a frame's slots for the whole method: that
/// slot kept the task (now the items run in a frame the loop leaves before parking). And an overflow's batch take that
/// lost a race to a thief left its copies in the batch past its end, where a pooled spare batch kept them (see
/// <see cref="DequeStolenSlotStressTests"/>). The warm-up runs each workload on fresh schedulers first, so that the
/// worker's loop is compiled at tier 1, with its callees inlined, as it is in a long-running process.
/// </remarks>
[Collection(SerialResourceGroup.Name)]
public sealed class IdleRetentionTests : IClassFixture<IdleRetentionTests.LoopWarmUp>
{
    /// <summary>
    /// Runs every workload on 40 fresh schedulers (80 starts of the worker's loop, past the runtime's call count for
    /// tier 1), then waits for the background compilation. Without it a run of this class alone tests the loop's tier-0
    /// or on-stack-replaced code, whose frame differs from the one a long-running process parks in. (It did not make the
    /// loop frame's leak reproduce alone: with the old loop, 4 of 4 runs of this class passed; full-suite runs caught it.)
    /// </summary>
    public sealed class LoopWarmUp
    {
        public LoopWarmUp()
        {
            for (int i = 0; i < 40; i++)
            {
                using var scheduler = SchedulerTestHelpers.Create(2);
                foreach (Workload workload in Enum.GetValues<Workload>())
                {
                    Run(scheduler, workload);
                }
            }

            Thread.Sleep(1_000);
        }
    }

    public enum Workload
    {
        /// <summary>A recursive fork-join tree: children in the deque and the LIFO slot, stolen and inlined.</summary>
        ForkJoinTree,

        /// <summary>Async methods that yield and await each other: inbox posts and await resumptions.</summary>
        AwaitChains,

        /// <summary>Continuation chains: the LIFO slot and its cap's demotions.</summary>
        ContinuationChains,

        /// <summary>Items queued from a thread outside the scheduler: the global queue, and the batches workers move from it.</summary>
        OutsideProducer,

        /// <summary>One task spawning far more than its deque holds: overflow batches through the global queue, and their pool.</summary>
        DequeOverflow,
    }

    [Theory]
    [InlineData(Workload.ForkJoinTree)]
    [InlineData(Workload.AwaitChains)]
    [InlineData(Workload.ContinuationChains)]
    [InlineData(Workload.OutsideProducer)]
    [InlineData(Workload.DequeOverflow)]
    public async Task Parked_workers_keep_no_finished_task_alive(Workload workload)
    {
        using var scheduler = SchedulerTestHelpers.Create(2);
        for (int round = 0; round < 5; round++)
        {
            WeakReference[] finished = Run(scheduler, workload);
            finished.Should().HaveCountGreaterThan(100);

            await SchedulerTestHelpers.WaitUntilAsync(() => scheduler.IsWorkerParked(0) && scheduler.IsWorkerParked(1));
            scheduler.IsWorkerParked(0).Should().BeTrue();
            scheduler.IsWorkerParked(1).Should().BeTrue();
            Collected.Await(finished);
            finished.Count(static r => r.IsAlive).Should().Be(0,
                "the scheduler lets go of every task it ran once its workers park ({0}, round {1}; {2})", workload, round, DescribeAlive(scheduler, finished));
        }
    }

    /// <summary>
    /// <see cref="WorkStealingTaskScheduler.GetStatistics"/> (and so every metrics collection) counts the queued work while
    /// a burst fills the global queue over several segments. Counting must not keep what the workers take afterwards.
    /// </summary>
    [Fact]
    public async Task Statistics_read_during_a_burst_keep_no_finished_task_alive()
    {
        // No compensation: with both workers held, a test thread kept off its core for the compensation delay would let a
        // compensation thread start taking the burst before it is counted.
        using var scheduler = SchedulerTestHelpers.CreateWithoutCompensation(2);
        for (int round = 0; round < 3; round++)
        {
            WeakReference[] finished = RunBurstReadingStatistics(scheduler);

            await SchedulerTestHelpers.WaitUntilAsync(() => scheduler.IsWorkerParked(0) && scheduler.IsWorkerParked(1));
            Collected.Await(finished);
            finished.Count(static r => r.IsAlive).Should().Be(0,
                "counting the queued work lets go of nothing once it ran (round {0}; {1})", round, DescribeAlive(scheduler, finished));
        }
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private static WeakReference[] RunBurstReadingStatistics(WorkStealingTaskScheduler scheduler)
    {
        var made = new ConcurrentQueue<WeakReference>();
        using var release = new ManualResetEventSlim();
        using var done = new CountdownEvent(500);
        using var held = new CountdownEvent(2);

        // Both workers held, so the burst stays queued (several segments of the global queue) while it is counted.
        for (int i = 0; i < 2; i++)
        {
            scheduler.Factory.StartNew(() => { held.Signal(); release.Wait(); }, CancellationToken.None, TaskCreationOptions.PreferFairness, scheduler);
        }

        held.Wait(SchedulerTestHelpers.Timeout).Should().BeTrue("both workers take a holder");
        for (int i = 0; i < 500; i++)
        {
            Track(made, scheduler.Factory.StartNew(() => done.Signal()));
        }

        scheduler.GetStatistics().QueuedTasks.Should().BeGreaterThanOrEqualTo(500);
        release.Set();
        done.Wait(SchedulerTestHelpers.Timeout).Should().BeTrue("the burst runs");
        return made.ToArray();
    }

    /// <summary>For a failure: which tasks are alive (their index in creation order, status) and what of the scheduler holds them.</summary>
    private static string DescribeAlive(WorkStealingTaskScheduler scheduler, WeakReference[] finished)
    {
        var alive = new List<string>();
        for (int i = 0; i < finished.Length; i++)
        {
            if (finished[i].Target is Task task)
            {
                List<string> holders = scheduler.DescribeHoldersForTests(task);
                alive.Add($"#{i} of {finished.Length} {task.Status}, held by {(holders.Count == 0 ? "nothing of the scheduler" : string.Join(", ", holders))}");
            }
        }

        return alive.Count == 0 ? "none alive" : $"{string.Join("; ", alive.Take(5))}; {scheduler.GetStatistics()}, compensation threads {scheduler.LiveCompensationThreads}";
    }

    /// <summary>Runs the workload to its end and returns weak references to every task it made (nothing else is kept).</summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    private static WeakReference[] Run(WorkStealingTaskScheduler scheduler, Workload workload)
    {
        var made = new ConcurrentQueue<WeakReference>();
        using var done = new CountdownEvent(1);
        switch (workload)
        {
            case Workload.ForkJoinTree:
                Track(made, scheduler.Factory.StartNew(() => Tree(made, depth: 9)).ContinueWith(_ => done.Signal(), scheduler));
                break;
            case Workload.AwaitChains:
                done.AddCount(16);
                for (int i = 0; i < 16; i++)
                {
                    Track(made, scheduler.Factory.StartNew(() => Track(made, AwaitChain(made, done, 16))));
                }

                done.Signal();
                break;
            case Workload.ContinuationChains:
                done.AddCount(8);
                for (int i = 0; i < 8; i++)
                {
                    Task link = Track(made, scheduler.Factory.StartNew(static () => { }));
                    for (int step = 0; step < 64; step++)
                    {
                        link = Track(made, link.ContinueWith(static _ => { }, scheduler));
                    }

                    Track(made, link.ContinueWith(_ => done.Signal(), scheduler));
                }

                done.Signal();
                break;
            case Workload.OutsideProducer:
                done.AddCount(1_000);
                for (int i = 0; i < 1_000; i++)
                {
                    Track(made, scheduler.Factory.StartNew(() => done.Signal()));
                }

                done.Signal();
                break;
            case Workload.DequeOverflow:
                done.AddCount(2_000);
                Track(made, scheduler.Factory.StartNew(() =>
                {
                    for (int i = 0; i < 2_000; i++)
                    {
                        Track(made, Task.Factory.StartNew(() => done.Signal()));
                    }
                }));

                done.Signal();
                break;
        }

        done.Wait(SchedulerTestHelpers.Timeout).Should().BeTrue("the workload finishes");
        return made.ToArray();
    }

    private static T Track<T>(ConcurrentQueue<WeakReference> made, T task)
        where T : Task
    {
        made.Enqueue(new WeakReference(task));
        return task;
    }

    private static void Tree(ConcurrentQueue<WeakReference> made, int depth)
    {
        if (depth == 0)
        {
            return;
        }

        Task left = Track(made, Task.Factory.StartNew(() => Tree(made, depth - 1)));
        Task right = Track(made, Task.Factory.StartNew(() => Tree(made, depth - 1)));
        Task.WaitAll(left, right);
    }

    private static async Task AwaitChain(ConcurrentQueue<WeakReference> made, CountdownEvent done, int length)
    {
        for (int i = 0; i < length; i++)
        {
            await Task.Yield();
            await Track(made, Step(i));
        }

        done.Signal();
    }

    // Never completes synchronously: such an async method returns a cached task that is always alive.
    private static async Task Step(int i)
    {
        if (i % 2 == 0)
        {
            await Task.Yield();
        }
        else
        {
            await Task.Factory.StartNew(static () => { }); // to the LIFO slot of the worker running this
        }
    }
}
