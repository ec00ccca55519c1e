using System.Diagnostics;

namespace Scheduler.Tests.Scheduling;

[Collection(SerialResourceGroup.Name)]
public sealed class IdleCpuTests
{
    [Fact]
    public async Task Ten_thousand_awaiting_tasks_burn_under_three_percent_of_a_core_while_idle()
    {
        using var scheduler = new WorkStealingTaskScheduler(2);
        var never = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        Task[] waiting = Enumerable.Range(0, 10_000)
            .Select(_ => scheduler.Factory.StartNew(async () => await never.Task).Unwrap())
            .ToArray();

        await Task.Delay(200); // ~50 ms is enough for workers to park; leave margin for the JIT and GC

        using var process = Process.GetCurrentProcess();
        process.Refresh();
        TimeSpan cpuBefore = process.TotalProcessorTime;
        var wall = Stopwatch.StartNew();
        long parksBefore = scheduler.GetStatistics().WorkerParks;
        await Task.Delay(2000);
        process.Refresh();
        double cpuMs = (process.TotalProcessorTime - cpuBefore).TotalMilliseconds;
        double share = cpuMs / wall.Elapsed.TotalMilliseconds;

        // The whole process (test host included) must stay under 3% of one core.
        share.Should().BeLessThan(0.03, $"idle CPU was {cpuMs:F1} ms over {wall.ElapsedMilliseconds} ms");
        (scheduler.GetStatistics().WorkerParks - parksBefore).Should().BeLessThan(10, "parked workers must stay parked");

        never.SetResult();
        await Task.WhenAll(waiting).WithTimeout();
    }
}
