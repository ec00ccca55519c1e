namespace Scheduler.Tests.Scheduling;

/// <summary>
/// Shutdown: an idle worker exits only when nothing is queued where it could take it and every peer is parked or gone
/// (Worker.CanExit). The queue half matters when an item lands in that worker's inbox after its last poll: a foreign
/// producer (an I/O or timer completion) finds the owner idle and awake and leaves the item to it. The seam runs at the
/// exit check, where no test could otherwise place the item.
/// </summary>
public sealed class DisposeExitCheckTests
{
    [Fact]
    public async Task An_item_that_reaches_an_idle_worker_as_it_checks_whether_to_exit_runs_on_that_worker_before_Dispose_returns()
    {
        var scheduler = SchedulerTestHelpers.Create(1, spin: 0);
        // Parked: Dispose wakes it, and its first exit check is then the loop's own (its next poll would find the item).
        SpinWait.SpinUntil(() => scheduler.IsWorkerParked(0), SchedulerTestHelpers.Timeout).Should().BeTrue("the worker has nothing to do");

        int ran = 0;
        int ranOnWorker = 0;
        var item = new SchedulerTestHelpers.RecordingWorkItem(() =>
        {
            if (scheduler.TryGetCurrentWorkerIndex(out _))
            {
                Interlocked.Increment(ref ranOnWorker);
            }

            Interlocked.Increment(ref ran);
        });
        int armed = 1;
        scheduler.ExitCheckHookForTests = () =>
        {
            if (Interlocked.Exchange(ref armed, 0) == 1)
            {
                var producer = new Thread(() => scheduler.EnqueueToWorker(0, item));
                producer.Start();
                producer.Join();
            }
        };

        await Task.Run(scheduler.Dispose).WithTimeout();
        int ranByDispose = Volatile.Read(ref ran);
        armed.Should().Be(0, "the worker checked whether it may exit");

        await SchedulerTestHelpers.WaitUntilAsync(() => Volatile.Read(ref ran) != 0);
        ranOnWorker.Should().Be(1, "an item queued while a worker is still there runs on it, not on the ThreadPool after the worker left it behind");
        ranByDispose.Should().Be(1, "Dispose runs everything queued before the workers exit");
        ran.Should().Be(1);
    }
}
