using System.Diagnostics;

namespace Scheduler.Tests.Scheduling;

[Collection(SerialResourceGroup.Name)]
public sealed class IdleCpuTests
{
    [Fact]
    public async Task Ten_thousand_awaiting_tasks_burn_under_three_percent_of_a_core_while_idle()
    {
        using var scheduler = new WorkStealingTaskScheduler(new WorkStealingTaskSchedulerOptions { WorkerCount = 2, ThreadNamePrefix = "IdleProbe" });
        var never = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        Task[] waiting = Enumerable.Range(0, 10_000)
            .Select(_ => scheduler.Factory.StartNew(async () => await never.Task).Unwrap())
            .ToArray();

        // Workers park ~50 ms after the last work; the rest lets the runtime settle (tiered JIT, GC) so that the
        // measurement sees the idle process, not the previous tests' after-effects.
        await Task.Delay(1000);
        GC.Collect();
        GC.WaitForPendingFinalizers();

        double processBefore = ThreadCpu.ProcessMillisecondsExcludingJit();
        double workersBefore = ThreadCpu.Milliseconds("IdleProbe");
        var wall = Stopwatch.StartNew();
        long parksBefore = scheduler.GetStatistics().WorkerParks;
        await Task.Delay(2000);
        double processMs = ThreadCpu.ProcessMillisecondsExcludingJit() - processBefore;
        double workersMs = ThreadCpu.Milliseconds("IdleProbe") - workersBefore;
        double elapsedMs = wall.Elapsed.TotalMilliseconds;

        (workersMs / elapsedMs).Should().BeLessThan(0.005, $"parked workers burned {workersMs:F1} ms over {elapsedMs:F0} ms");
        (processMs / elapsedMs).Should().BeLessThan(0.03, $"the idle process burned {processMs:F1} ms over {elapsedMs:F0} ms");
        (scheduler.GetStatistics().WorkerParks - parksBefore).Should().BeLessThan(10, "parked workers must stay parked");

        never.SetResult();
        await Task.WhenAll(waiting).WithTimeout();
    }
}

/// <summary>Per-thread CPU time from /proc (Linux): user + system time of threads selected by name.</summary>
internal static class ThreadCpu
{
    private const string TieredCompilationThread = ".NET Tiered Com";

    public static double Milliseconds(string namePrefix) => Sum(comm => comm.StartsWith(namePrefix, StringComparison.Ordinal));

    /// <summary>
    /// The whole process but the runtime's background tier-up compiler, which keeps recompiling code that earlier tests
    /// in this process ran hot; that is the test run's cost, not the idle scheduler's.
    /// </summary>
    public static double ProcessMillisecondsExcludingJit() => Sum(comm => !comm.StartsWith(TieredCompilationThread, StringComparison.Ordinal));

    private static double Sum(Func<string, bool> include)
    {
        double ticksPerMs = 100.0 / 1000; // USER_HZ is 100 on Linux
        long ticks = 0;
        foreach (string task in Directory.GetDirectories("/proc/self/task"))
        {
            try
            {
                string comm = File.ReadAllText(Path.Combine(task, "comm")).Trim();
                if (!include(comm))
                {
                    continue;
                }

                string stat = File.ReadAllText(Path.Combine(task, "stat"));
                string[] fields = stat[(stat.LastIndexOf(')') + 2)..].Split(' ');
                ticks += long.Parse(fields[11], System.Globalization.CultureInfo.InvariantCulture) + long.Parse(fields[12], System.Globalization.CultureInfo.InvariantCulture);
            }
            catch (IOException)
            {
                // The thread exited while we looked.
            }
        }

        return ticks / ticksPerMs;
    }
}
