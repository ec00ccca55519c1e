using System.Diagnostics;

namespace Scheduler.Tests;

/// <summary>
/// Garbage collection for tests that check what an object lets go of: collects, with finalizers run, until every given
/// reference is dead or a bound passes. One collection is not always enough: the runtime lets go of an exited thread's
/// object a little after <see cref="Thread.Join()"/> returns, and an object freed by a finalizer needs a second pass.
/// The caller then asserts on the references itself. The bound is generous: it is waited in full only when a reference
/// stays alive (the test fails then anyway), and on a loaded machine the finalizer thread, or the exiting thread the
/// runtime still holds, can be kept off a core for seconds (a CI run measured 3.45 s for a step that takes milliseconds).
/// </summary>
internal static class Collected
{
    private static readonly TimeSpan s_bound = TimeSpan.FromSeconds(30);

    /// <summary>Collects until no reference in <paramref name="references"/> is alive, for at most 30 seconds.</summary>
    public static void Await(params WeakReference[] references)
    {
        long giveUpAt = Stopwatch.GetTimestamp() + (long)(s_bound.TotalSeconds * Stopwatch.Frequency);
        while (true)
        {
            GC.Collect();
            GC.WaitForPendingFinalizers();
            GC.Collect();
            if (!references.Any(static r => r.IsAlive) || Stopwatch.GetTimestamp() >= giveUpAt)
            {
                return;
            }

            Thread.Sleep(10);
        }
    }
}
