using System.Diagnostics;

namespace Scheduler.Tests.Scheduling;

/// <summary>Idle workers spin only while they have a CPU to themselves (WorkStealingTaskScheduler.Spinning.cs).</summary>
[Collection(SerialResourceGroup.Name)]
public sealed class SpinningTests
{
    [Fact]
    public async Task A_worker_preempted_while_spinning_cuts_its_spell_short()
    {
        // Threads that keep every CPU busy, as another process would: a spinning worker is then preempted (its yields
        // hand the CPU to them for a whole time slice). Found as a test that timed out beside two busy processes: a
        // one-connection echo took 3.7 ms per round trip, its workers waiting for time slices while they spun.
        var scheduler = new WorkStealingTaskScheduler(new WorkStealingTaskSchedulerOptions { WorkerCount = 2, SpinIterations = 256, ThreadNamePrefix = "Test" });
        await using var disposeScheduler = SchedulerTestHelpers.DisposeWithin(scheduler);
        using (new CpuHogs())
        {
            // Each item leaves its worker idle, spinning, until the next arrives.
            var deadline = Stopwatch.StartNew();
            while (scheduler.SpinsCutShortPerWorker.Sum() == 0 && deadline.Elapsed < TimeSpan.FromSeconds(20))
            {
                await Task.Factory.StartNew(static () => { }, CancellationToken.None, TaskCreationOptions.None, scheduler);
            }
        }

        scheduler.SpinsCutShortPerWorker.Sum().Should().BePositive("a spell that lost the CPU for over half a millisecond stops, and the worker parks");
    }

    [Fact]
    public async Task A_worker_whose_spells_keep_being_cut_parks_at_once_without_spinning()
    {
        // A spell of int.MaxValue polls lasts minutes: a worker that parks within the timeout after an item skipped it.
        // Each item records eight close cuts on its own worker (pauses of 10 ms doubling to a second), so the worker is
        // in a pause of a second when the item ends. Real cuts are counted apart: load may cut the spell the worker
        // starts with, before the first item, but none can come after it, as nothing spins.
        const int Items = 5;
        var scheduler = new WorkStealingTaskScheduler(new WorkStealingTaskSchedulerOptions { WorkerCount = 1, SpinIterations = int.MaxValue, ThreadNamePrefix = "Test" });
        await using var disposeScheduler = SchedulerTestHelpers.DisposeWithin(scheduler);
        using var parking = new SemaphoreSlim(0);
        scheduler.ParkHookForTests = () => parking.Release();
        long realCutsBeforeTheFirstItem = -1;
        try
        {
            for (int i = 0; i < Items; i++)
            {
                bool first = i == 0;
                scheduler.EnqueueToWorker(0, new SchedulerTestHelpers.RecordingWorkItem(() =>
                {
                    if (first)
                    {
                        realCutsBeforeTheFirstItem = scheduler.SpinsCutShortPerWorker[0]; // on the worker, which alone writes it: exact
                    }

                    for (int cut = 0; cut < 8; cut++)
                    {
                        scheduler.RecordSpinCutOnCurrentWorkerForTests(Stopwatch.GetTimestamp());
                    }
                }));
                (await parking.WaitAsync(TimeSpan.FromSeconds(10))).Should().BeTrue($"item {i} left the worker in a pause of a second after close cuts: it parks at once instead of polling for minutes");
            }
        }
        finally
        {
            scheduler.ParkHookForTests = null;
        }

        scheduler.SpinsCutShortPerWorker[0].Should().Be(Volatile.Read(ref realCutsBeforeTheFirstItem), "a paused worker does not spin, so no spell of its was cut");
    }

    [Fact]
    public void Only_a_worker_can_record_a_cut_of_its_own_spell()
    {
        using var scheduler = SchedulerTestHelpers.Create(1);

        FluentActions.Invoking(() => scheduler.RecordSpinCutOnCurrentWorkerForTests(Stopwatch.GetTimestamp()))
            .Should().Throw<InvalidOperationException>().WithMessage("*this scheduler's workers*");
    }
}
