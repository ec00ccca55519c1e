namespace Scheduler.Tests.Scheduling;

/// <summary>
/// Work queued to one worker's inbox (a waker's continuation, sent by an I/O or timer thread) while that worker is busy
/// must not wait for it when a peer sleeps: the producer, or the owner as it turns busy, wakes a parked peer, which takes
/// the item from the busy owner's inbox. Here the owner blocks until the item has run, so an item left to its owner
/// would never run at all (a deadlock the bounded wait turns into a failure). The watchdog, which wakes a parked peer
/// for a stalled worker's stealable work within a period or two, is kept out of these tests: it would hide a missed
/// wake-up behind a 10–20 ms delay.
/// </summary>
public sealed class InboxWakeTests
{
    [Fact]
    public async Task An_item_queued_to_a_busy_workers_inbox_wakes_a_parked_peer_that_runs_it()
    {
        var scheduler = SchedulerTestHelpers.Create(2, spin: 0);
        scheduler.SuppressWatchdogForTests = true;
        await using var disposeScheduler = SchedulerTestHelpers.DisposeWithin(scheduler);
        using var itemRan = new ManualResetEventSlim();
        var ownerIndex = new TaskCompletionSource<int>(TaskCreationOptions.RunContinuationsAsynchronously);
        int ranOn = -1;

        Task owner = Task.Factory.StartNew(() =>
        {
            scheduler.TryGetCurrentWorkerIndex(out int index).Should().BeTrue();
            ownerIndex.SetResult(index);
            return itemRan.Wait(SchedulerTestHelpers.Timeout);
        }, CancellationToken.None, TaskCreationOptions.None, scheduler).ContinueWith(t => t.Result.Should().BeTrue("the item queued to the busy owner must run elsewhere"), TaskScheduler.Default);

        int busy = await ownerIndex.Task.WithTimeout();
        int peer = 1 - busy;
        await SchedulerTestHelpers.WaitUntilAsync(() => scheduler.IsWorkerParked(peer));
        scheduler.IsWorkerParked(peer).Should().BeTrue("the peer has nothing to do, so it parks");

        // From a thread outside the scheduler, to the busy owner's inbox.
        scheduler.EnqueueToWorker(busy, new SchedulerTestHelpers.RecordingWorkItem(() =>
        {
            scheduler.TryGetCurrentWorkerIndex(out ranOn);
            itemRan.Set();
        }));

        await owner.WithTimeout(SchedulerTestHelpers.Timeout + TimeSpan.FromSeconds(5));
        ranOn.Should().Be(peer);
    }

    [Fact]
    public async Task An_owner_that_turns_busy_with_items_left_in_its_inbox_wakes_a_parked_peer_for_them()
    {
        // Both items reach the owner's inbox while it is parked: the first post unparks the owner only (peers keep off
        // an idle owner's inbox, so waking one would be for nothing). The owner then runs the first item, which blocks
        // until the second has run: only a peer can run it, and only the owner, turning busy, knows to wake one.
        var scheduler = SchedulerTestHelpers.Create(2, spin: 0);
        scheduler.SuppressWatchdogForTests = true;
        await using var disposeScheduler = SchedulerTestHelpers.DisposeWithin(scheduler);
        await SchedulerTestHelpers.WaitUntilAsync(() => scheduler.IsWorkerParked(0) && scheduler.IsWorkerParked(1));
        scheduler.IsWorkerParked(0).Should().BeTrue();
        scheduler.IsWorkerParked(1).Should().BeTrue();

        using var secondRan = new ManualResetEventSlim();
        var firstDone = new TaskCompletionSource<bool>(TaskCreationOptions.RunContinuationsAsynchronously);
        int secondRanOn = -1;
        var first = new SchedulerTestHelpers.RecordingWorkItem(() => firstDone.SetResult(secondRan.Wait(SchedulerTestHelpers.Timeout)));
        var second = new SchedulerTestHelpers.RecordingWorkItem(() =>
        {
            scheduler.TryGetCurrentWorkerIndex(out secondRanOn);
            secondRan.Set();
        });

        // Back to back from this thread; should the owner wake between the two, the second finds it busy (the case above).
        scheduler.EnqueueToWorker(0, first);
        scheduler.EnqueueToWorker(0, second);

        (await firstDone.Task.WithTimeout(SchedulerTestHelpers.Timeout + TimeSpan.FromSeconds(5))).Should().BeTrue("the second item must run while the first blocks its owner");
        secondRanOn.Should().Be(1);
    }
}
