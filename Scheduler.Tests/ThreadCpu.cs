using System.Globalization;

namespace Scheduler.Tests;

/// <summary>
/// Per-thread CPU time of this process from /proc/self/task (Linux), by thread name. It reads each thread's schedstat,
/// the kernel's nanosecond count of its time on a CPU. Sums of stat's utime and stime were off by tens of milliseconds
/// per 2 s window: they come in 10 ms ticks per thread (10 ms reported for 43 ms of CPU), and a thread that exited
/// during the window took its whole lifetime out of the "after" sum (−10 ms reported). Falls back to those ticks when
/// the kernel keeps no schedstat.
/// </summary>
internal static class ThreadCpu
{
    /// <summary>CPU time per thread id, with the thread's name (its first 15 bytes: the kernel keeps no more).</summary>
    public sealed class Snapshot : Dictionary<int, (string Name, long Nanoseconds)>;

    /// <summary>One thread's CPU time over a window.</summary>
    public readonly record struct Usage(string Name, double Milliseconds);

    /// <summary>
    /// Threads the runtime shares with whatever the process queues to it: ThreadPool workers, its gate and wait threads,
    /// the timer thread, and the background tier-up compiler. In a test run they serve the test host: it polls for its
    /// parent's exit every 100 ms (Process.WaitForExitAsync) and flushes its result cache every 1.5 s, and each poll's
    /// ThreadPool dispatch costs about a millisecond on a loaded machine, 20-45 ms per 2 s in all (1-2% of a core), while
    /// the compiler keeps recompiling what earlier tests ran hot. That is the test run's cost, not the idle scheduler's.
    /// </summary>
    public static bool IsRuntimeServiceThread(string name) =>
        name.StartsWith(".NET TP ", StringComparison.Ordinal) || name == ".NET Timer" || name.StartsWith(".NET Tiered Com", StringComparison.Ordinal);

    public static Snapshot Take()
    {
        var snapshot = new Snapshot();
        foreach (string task in Directory.GetDirectories("/proc/self/task"))
        {
            try
            {
                snapshot[int.Parse(Path.GetFileName(task), CultureInfo.InvariantCulture)] =
                    (File.ReadAllText(Path.Combine(task, "comm")).Trim(), ReadNanoseconds(task));
            }
            catch (IOException)
            {
                // The thread exited while we looked.
            }
        }

        return snapshot;
    }

    /// <summary>
    /// What each thread alive now used since <paramref name="before"/> (all of it for a thread started since). A thread
    /// that exited meanwhile is missing with its share of the window only (a thread that burns CPU does not exit).
    /// </summary>
    public static IReadOnlyList<Usage> Since(Snapshot before) =>
        [.. Take().Select(t => new Usage(t.Value.Name, (t.Value.Nanoseconds - (before.TryGetValue(t.Key, out var b) ? b.Nanoseconds : 0)) / 1e6))];

    public static double Sum(IEnumerable<Usage> used, Func<string, bool> include) => used.Where(u => include(u.Name)).Sum(u => u.Milliseconds);

    /// <summary>The threads that used CPU, by name, most first: "name ×count ms".</summary>
    public static string Describe(IEnumerable<Usage> used) => string.Join(", ", used
        .GroupBy(u => u.Name)
        .Select(g => (Name: g.Key, Count: g.Count(), Milliseconds: g.Sum(u => u.Milliseconds)))
        .Where(g => g.Milliseconds >= 0.05)
        .OrderByDescending(g => g.Milliseconds)
        .Select(g => string.Create(CultureInfo.InvariantCulture, $"{g.Name}{(g.Count > 1 ? $" ×{g.Count}" : "")} {g.Milliseconds:F1} ms")));

    /// <summary>The calling thread's CPU time so far, in nanoseconds (10-ms ticks where the kernel keeps no schedstat).</summary>
    public static long CurrentThreadNanoseconds() => ReadNanoseconds("/proc/thread-self");

    private static long ReadNanoseconds(string task)
    {
        string schedstat = Path.Combine(task, "schedstat");
        if (File.Exists(schedstat))
        {
            // "time on CPU (ns) time waiting to run (ns) timeslices".
            return long.Parse(File.ReadAllText(schedstat).Split(' ')[0], CultureInfo.InvariantCulture);
        }

        string stat = File.ReadAllText(Path.Combine(task, "stat"));
        string[] fields = stat[(stat.LastIndexOf(')') + 2)..].Split(' ');
        long ticks = long.Parse(fields[11], CultureInfo.InvariantCulture) + long.Parse(fields[12], CultureInfo.InvariantCulture);
        return ticks * 10_000_000; // utime + stime in USER_HZ (100) ticks
    }
}
