using System.Diagnostics;

namespace Scheduler.Tests.Scheduling;

/// <summary>Idle workers spin only while they have a CPU to themselves (WorkStealingTaskScheduler.Spinning.cs).</summary>
[Collection(SerialResourceGroup.Name)]
public sealed class SpinningTests
{
    [Theory]
    [InlineData(0, true, 0)]
    [InlineData(640, true, 0)]
    [InlineData(0, false, 10)]
    [InlineData(10, false, 20)]
    [InlineData(640, false, 1000)]
    [InlineData(1000, false, 1000)]
    public void An_isolated_cut_pauses_nothing_and_close_cuts_double_the_pause_from_ten_milliseconds_to_a_second(long previousMs, bool isolated, long expectedMs)
    {
        static long Units(long ms) => ms * Stopwatch.Frequency / 1000;

        WorkStealingTaskScheduler.NextSpinSuppression(Units(previousMs), isolated).Should().Be(Units(expectedMs));
    }

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
}
