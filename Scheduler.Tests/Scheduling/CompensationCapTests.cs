using System.Diagnostics;

namespace Scheduler.Tests.Scheduling;

/// <summary>
/// The compensation cap, from the same mutation round. Not in the serial collection: it takes over 20 s of ramp with
/// every thread blocked (no CPU), which overlaps the other tests instead of adding to the run.
/// </summary>
public sealed class CompensationCapTests
{
    private static readonly TimeSpan Bound = TimeSpan.FromSeconds(30);

    // Mutants: TryStartCompensationThread's cap off by one either way (`> MaxCompensationThreads` became `> Max + 1`, and
    // MaxCompensationThreads's floor 64 became 63). docs: "up to max(64, 8 × workers) at once". One worker: the cap is 64.
    // The shortest delay (one watchdog period) ramps to 64 threads in about 64·65/2 periods (21 s, more on a loaded
    // machine); a 65th would need 65 more periods of standstill, and gets over three times that.
    [Fact]
    public async Task Compensation_threads_stop_at_the_documented_cap_of_max_64_or_8_per_worker()
    {
        WorkStealingTaskScheduler scheduler = new(new WorkStealingTaskSchedulerOptions
        {
            WorkerCount = 1,
            ThreadNamePrefix = "CompensationCap",
            BlockingCompensationDelay = TimeSpan.FromMilliseconds(1),
        });
        using var release = new ManualResetEventSlim();
        try
        {
            // Every item blocks (the worker's and each compensation thread's), and more are queued than the cap.
            Task[] items = [.. Enumerable.Range(0, 100).Select(_ => scheduler.Factory.StartNew(() => release.Wait(TimeSpan.FromMinutes(2))))];
            var deadline = Stopwatch.StartNew();
            while (scheduler.LiveCompensationThreads < 64 && deadline.Elapsed < TimeSpan.FromSeconds(90))
            {
                await Task.Delay(50);
            }

            scheduler.LiveCompensationThreads.Should().Be(64, "the ramp reaches the cap");
            await Task.Delay(WorkStealingTaskScheduler.WatchdogPeriod * 65 * 3);
            scheduler.LiveCompensationThreads.Should().Be(64, "no compensation thread beyond the cap");
            scheduler.CompensationThreadsStarted.Should().Be(64);

            release.Set();
            await Task.WhenAll(items).WithTimeout("the released items", Bound);
        }
        finally
        {
            release.Set();
            SchedulerTestHelpers.DisposeBounded(scheduler);
        }
    }
}
