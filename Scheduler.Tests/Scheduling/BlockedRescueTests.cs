using System.Diagnostics;

namespace Scheduler.Tests.Scheduling;

/// <summary>
/// The watchdog's blocked-worker rescue (WorkStealingTaskScheduler.BlockedRescue.cs, docs/scheduling.md "Blocked workers
/// and the LIFO slot"): a worker seen blocked, without progress, at two looks has its deque and inbox moved to the global
/// queue, so a busy peer gets to them (CompensationSoakTests holds the starvation cases it fixes). A worker that is merely
/// computing keeps its deque: it runs that work itself (here, a child its own <c>Wait()</c> then inlines).
/// </summary>
public sealed class BlockedRescueTests
{
    [Fact]
    public async Task A_computing_worker_keeps_its_deque_and_still_inlines_its_own_child_there()
    {
        var scheduler = new WorkStealingTaskScheduler(new WorkStealingTaskSchedulerOptions
        {
            WorkerCount = 2,
            ThreadNamePrefix = "Computing",
            BlockingCompensationDelay = Timeout.InfiniteTimeSpan,
        });
        using var disposeScheduler = SchedulerTestHelpers.DisposeBoundedOnExit(scheduler);
        using var rendezvous = new Barrier(2);
        using var done = new CancellationTokenSource();

        // The peer stays busy (a yield loop), so it never steals: only the watchdog could take the computing worker's deque.
        Task churn = scheduler.Factory.StartNew(async () =>
        {
            rendezvous.SignalAndWait(SchedulerTestHelpers.Timeout).Should().BeTrue();
            while (!done.IsCancellationRequested)
            {
                await Task.Yield();
            }
        }).Unwrap();

        Task<(int Computer, int RanOn)> computer = scheduler.Factory.StartNew(() =>
        {
            rendezvous.SignalAndWait(SchedulerTestHelpers.Timeout).Should().BeTrue();
            int ranOn = -1;
            Task older = Task.Factory.StartNew(() => ranOn = Environment.CurrentManagedThreadId, CancellationToken.None, TaskCreationOptions.None, scheduler);
            Task newer = Task.Factory.StartNew(() => { }, CancellationToken.None, TaskCreationOptions.None, scheduler); // displaces older into the deque

            // Thirty watchdog periods of computing: stalled at every look, but never blocked.
            var clock = Stopwatch.StartNew();
            while (clock.ElapsedMilliseconds < 300)
            {
                Thread.SpinWait(100);
            }

            older.Wait(); // still the newest in this worker's deque: inlined here
            newer.Wait();
            return (Environment.CurrentManagedThreadId, ranOn);
        });

        (int computerThread, int ranOn) = await computer.WithTimeout("the computing worker");
        done.Cancel();
        await churn.WithTimeout("the yield loop");
        scheduler.BlockedQueueRescues.Should().Be(0, "a computing worker is not blocked: its deque stays its own");
        ranOn.Should().Be(computerThread, "the child waited in its deque and Wait() inlined it");
    }

    [Fact]
    public async Task A_blocked_workers_deque_and_inbox_reach_a_busy_peer_through_the_global_queue()
    {
        var scheduler = new WorkStealingTaskScheduler(new WorkStealingTaskSchedulerOptions
        {
            WorkerCount = 2,
            ThreadNamePrefix = "Blocked",
            BlockingCompensationDelay = Timeout.InfiniteTimeSpan, // only the rescue can help
        });
        using var disposeScheduler = SchedulerTestHelpers.DisposeBoundedOnExit(scheduler);
        using var rendezvous = new Barrier(2);
        using var done = new CancellationTokenSource();
        using var never = new CancellationTokenSource();

        Task churn = scheduler.Factory.StartNew(async () =>
        {
            rendezvous.SignalAndWait(SchedulerTestHelpers.Timeout).Should().BeTrue();
            while (!done.IsCancellationRequested)
            {
                await Task.Yield();
            }
        }).Unwrap();

        Task blocked = scheduler.Factory.StartNew(() =>
        {
            rendezvous.SignalAndWait(SchedulerTestHelpers.Timeout).Should().BeTrue();
            Task[] children = [.. Enumerable.Range(0, 5).Select(_ => Task.Factory.StartNew(() => { }, CancellationToken.None, TaskCreationOptions.None, scheduler))];

            // A continuation sent to this very worker's inbox from another thread (as a waker's completion would be).
            using var posted = new ManualResetEventSlim();
            scheduler.TryGetCurrentWorkerIndex(out int self).Should().BeTrue();
            Task.Run(() => scheduler.EnqueueToWorker(self, new SchedulerTestHelpers.RecordingWorkItem(posted.Set)));
            posted.Wait(never.Token); // not a task: only a peer taking this worker's inbox can run it
            Task.WaitAll(children, never.Token); // not inlined
        });

        await blocked.WithTimeout("the blocked worker's joins", TimeSpan.FromSeconds(10));
        done.Cancel();
        await churn.WithTimeout("the yield loop");
        scheduler.BlockedQueueRescues.Should().BeGreaterThan(0);
        scheduler.CompensationThreadsStarted.Should().Be(0, "compensation is off");
    }
}
