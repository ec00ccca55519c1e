namespace Scheduler.Tests.Scheduling;

/// <summary>
/// Items that arrive while a worker exits, after its last look at the queues. A producer that finds the worker idle and
/// awake, or already exited with nobody parked, wakes nobody. A worker that is not the last wakes every sleeper as it
/// leaves, and a woken peer takes the exited worker's inbox; the last one sets <c>terminated</c>, fences and drains every
/// queue to the ThreadPool (producers enqueue, fence and drain themselves once they see <c>terminated</c>). The seam holds
/// the exiting worker in that window while a foreign producer (an I/O or timer thread) queues.
/// </summary>
public sealed class DisposeExitDrainTests
{
    [Fact]
    public async Task Items_that_reach_the_last_worker_as_it_exits_run_once_on_the_ThreadPool_and_DisposeAsync_returns()
    {
        var scheduler = SchedulerTestHelpers.Create(1, spin: 0);
        int[] runs = new int[2];
        int armed = 1;
        scheduler.ExitHookForTests = () =>
        {
            if (Interlocked.Exchange(ref armed, 0) == 1)
            {
                var producer = new Thread(() =>
                {
                    scheduler.EnqueueToWorker(0, new SchedulerTestHelpers.RecordingWorkItem(() => Interlocked.Increment(ref runs[0]))); // to its inbox
                    scheduler.Enqueue(new SchedulerTestHelpers.RecordingWorkItem(() => Interlocked.Increment(ref runs[1]))); // to the global queue
                });
                producer.Start();
                producer.Join();
            }
        };

        await scheduler.DisposeAsync().AsTask().WithTimeout();
        armed.Should().Be(0, "the worker exited through the seam");
        scheduler.IsTerminated.Should().BeTrue();

        await SchedulerTestHelpers.WaitUntilAsync(() => Volatile.Read(ref runs[0]) != 0 && Volatile.Read(ref runs[1]) != 0);
        runs.Should().Equal([1, 1], "what reached the queues before the last worker was gone is drained to the ThreadPool, once");
    }

    [Fact]
    public async Task An_item_that_reaches_an_exiting_workers_inbox_is_run_once_by_its_parked_peer()
    {
        var scheduler = SchedulerTestHelpers.Create(2, spin: 0);
        // Idle long enough for the watchdog to disarm: it would otherwise find the exited worker's inbox (an exited worker
        // counts as busy) and wake the peer itself within two periods, and only the exiting worker's wake-up would be left
        // untested. Nothing re-arms it here: no worker turns busy before the peer takes the item.
        SpinWait.SpinUntil(() => !scheduler.IsWatchdogArmed, SchedulerTestHelpers.Timeout).Should().BeTrue("a tick that finds every worker idle disarms the watchdog");
        int ran = 0;
        int ranOn = -1;
        int exiting = -1;
        int armed = 1;
        scheduler.ExitHookForTests = () =>
        {
            if (Interlocked.Exchange(ref armed, 0) == 1)
            {
                // The first to exit: it saw its peer parked, and nothing wakes that peer but this worker's way out.
                scheduler.TryGetCurrentWorkerIndex(out exiting);
                int target = exiting;
                var producer = new Thread(() => scheduler.EnqueueToWorker(target, new SchedulerTestHelpers.RecordingWorkItem(() =>
                {
                    scheduler.TryGetCurrentWorkerIndex(out ranOn);
                    Interlocked.Increment(ref ran);
                })));
                producer.Start();
                producer.Join();
            }
        };

        await scheduler.DisposeAsync().AsTask().WithTimeout();
        armed.Should().Be(0, "a worker exited through the seam");

        ran.Should().Be(1, "the item reached a live scheduler: a worker runs it, once, before the last one exits");
        ranOn.Should().Be(1 - exiting, "the parked peer, woken by the exiting worker, takes the exited worker's inbox");
    }

    /// <summary>
    /// The last worker sets <c>terminated</c> and fences before its drain: a producer that queues after the drain looked at
    /// its queue then reads it set and drains the item itself. Set after the drain (or read before it by the producer),
    /// the item stays in a queue that no worker and no drain will look at again.
    /// </summary>
    [Fact]
    public async Task An_item_queued_after_the_final_drain_looked_at_its_queue_is_drained_by_its_producer()
    {
        var scheduler = SchedulerTestHelpers.Create(1, spin: 0);
        var ran = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        bool terminatedSeenByProducer = false;
        int armed = 1;
        scheduler.FinalDrainHookForTests = () =>
        {
            if (Interlocked.Exchange(ref armed, 0) == 1)
            {
                // The drain has emptied the global queue and will not look at it again: a foreign producer queues there.
                var producer = new Thread(() =>
                {
                    scheduler.Enqueue(new SchedulerTestHelpers.RecordingWorkItem(() => ran.TrySetResult()));
                    terminatedSeenByProducer = scheduler.IsTerminated;
                });
                producer.Start();
                producer.Join();
            }
        };

        await scheduler.DisposeAsync().AsTask().WithTimeout("DisposeAsync");
        armed.Should().Be(0, "the last worker drained through the seam");
        await ran.Task.WithTimeout("The item queued to the global queue behind the final drain (stranded: no worker is left and the producer did not drain it)");
        terminatedSeenByProducer.Should().BeTrue("the last worker sets terminated before it drains, so a producer that queues during the drain sees it");
    }
}
