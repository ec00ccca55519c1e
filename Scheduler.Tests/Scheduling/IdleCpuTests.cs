using System.Diagnostics;

namespace Scheduler.Tests.Scheduling;

[Collection(SerialResourceGroup.Name)]
[HoldsUnobservedProbe]
public sealed class IdleCpuTests
{
    [Fact]
    public async Task Ten_thousand_awaiting_tasks_burn_under_three_percent_of_a_core_while_idle()
    {
        var scheduler = new WorkStealingTaskScheduler(new WorkStealingTaskSchedulerOptions { WorkerCount = 2, ThreadNamePrefix = "IdleProbe" });
        await using var disposeScheduler = SchedulerTestHelpers.DisposeWithin(scheduler);
        var never = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        Task[] waiting = Enumerable.Range(0, 10_000)
            .Select(_ => scheduler.Factory.StartNew(async () => await never.Task).Unwrap())
            .ToArray();

        // Workers park a spin spell (~0.1 ms) after the last work and the watchdog disarms at its next tick (10 ms); the
        // rest lets the runtime settle (tiered JIT, GC) so that the measurement sees the idle process, not the previous
        // tests' after-effects.
        await Task.Delay(1000);
        GC.Collect();
        GC.WaitForPendingFinalizers();

        bool watchdogArmedBefore = scheduler.IsWatchdogArmed;
        long parksBefore = scheduler.GetStatistics().WorkerParks;
        ThreadCpu.Snapshot before = ThreadCpu.Take();
        var wall = Stopwatch.StartNew();
        await Task.Delay(2000);
        IReadOnlyList<ThreadCpu.Usage> used = ThreadCpu.Since(before);
        double elapsedMs = wall.Elapsed.TotalMilliseconds;

        double workersMs = ThreadCpu.Sum(used, name => name.StartsWith("IdleProbe", StringComparison.Ordinal));
        double processMs = ThreadCpu.Sum(used, name => !ThreadCpu.IsRuntimeServiceThread(name));
        string breakdown = ThreadCpu.Describe(used);
        (workersMs / elapsedMs).Should().BeLessThan(0.005, "parked workers burned {0:F1} ms over {1:F0} ms ({2})", workersMs, elapsedMs, breakdown);
        (processMs / elapsedMs).Should().BeLessThan(0.03, "the idle process burned {0:F1} ms over {1:F0} ms outside the runtime's shared threads ({2})", processMs, elapsedMs, breakdown);

        // The runtime's shared threads were left out above; the only work this scheduler puts on them while idle would
        // be its watchdog's timer ticks, and the watchdog disarms once every worker is idle.
        watchdogArmedBefore.Should().BeFalse("the watchdog disarms once every worker is idle (no periodic wake-up)");
        scheduler.IsWatchdogArmed.Should().BeFalse("nothing re-armed the watchdog of an idle scheduler");
        (scheduler.GetStatistics().WorkerParks - parksBefore).Should().BeLessThan(10, "parked workers must stay parked");

        never.SetResult();
        await Task.WhenAll(waiting).WithTimeout();
    }
}
