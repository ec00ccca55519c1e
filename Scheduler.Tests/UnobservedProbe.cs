using System.Runtime.CompilerServices;

namespace Scheduler.Tests;

/// <summary>
/// A diagnostic, off unless <c>UNOBSERVED_PROBE</c> names a file: every task fault that goes unobserved during the run
/// is appended there with the time it was reported, and a collection every 200 ms reports each soon after its test
/// drops it, so the times point at the test (set the console logger to <c>normal</c> verbosity, with timestamps).
/// A dropped fault of the library's is what the crash tests watch for, so a test must observe what it drops.
/// </summary>
internal static class UnobservedProbe
{
    [ModuleInitializer]
    internal static void StartWhenAsked()
    {
        if (Environment.GetEnvironmentVariable("UNOBSERVED_PROBE") is not { Length: > 0 } path)
        {
            return;
        }

        var gate = new object();
        TaskScheduler.UnobservedTaskException += (_, e) =>
        {
            lock (gate)
            {
                File.AppendAllText(path, $"=== {DateTime.UtcNow:HH:mm:ss.fff}{Environment.NewLine}{e.Exception}{Environment.NewLine}");
            }
        };
        var collector = new Thread(static () =>
        {
            while (true)
            {
                Thread.Sleep(200);
                GC.Collect();
                GC.WaitForPendingFinalizers();
            }
        })
        {
            IsBackground = true,
            Name = "unobserved-probe",
        };
        collector.Start();
    }
}
