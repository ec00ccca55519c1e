using System.Reflection;
using System.Runtime.CompilerServices;
using Xunit.Sdk;

namespace Scheduler.Tests;

/// <summary>
/// A diagnostic, off unless <c>UNOBSERVED_PROBE</c> names a file: every task fault that goes unobserved during the run
/// is appended there with the time it was reported, and a collection every 200 ms reports each soon after its test
/// drops it, so the times point at the test (set the console logger to <c>normal</c> verbosity, with timestamps).
/// A dropped fault of the library's is what the crash tests watch for, so a test must observe what it drops.
/// The collections stop while a test marked <see cref="HoldsUnobservedProbeAttribute"/> runs: a forced full collection
/// every 200 ms is CPU on the probe's thread and bytes in the process-wide counters, and the resource tests that read
/// those failed beside it (session 35). A fault dropped meanwhile is logged at the next collection after the test.
/// </summary>
internal static class UnobservedProbe
{
    private static int s_holds;

    /// <summary>Stops the collections until a matching <see cref="Release"/>.</summary>
    internal static void Hold() => Interlocked.Increment(ref s_holds);

    /// <summary>Lets the collections go on once every <see cref="Hold"/> is released.</summary>
    internal static void Release() => Interlocked.Decrement(ref s_holds);

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
                if (Volatile.Read(ref s_holds) > 0)
                {
                    continue;
                }

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

/// <summary>
/// Holds the <see cref="UnobservedProbe"/>'s collections off while each test of the class runs: for tests that read
/// process-wide CPU or allocation counters (they run alone, so nothing else drops a fault meanwhile).
/// </summary>
[AttributeUsage(AttributeTargets.Class, AllowMultiple = false)]
public sealed class HoldsUnobservedProbeAttribute : BeforeAfterTestAttribute
{
    public override void Before(MethodInfo methodUnderTest) => UnobservedProbe.Hold();

    public override void After(MethodInfo methodUnderTest) => UnobservedProbe.Release();
}
