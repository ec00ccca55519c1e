using System.Diagnostics;

namespace Scheduler.Tests;

/// <summary>
/// Times a library call up to the moment its task completes, read on the thread that completes it. The test method's
/// own resumption after an <c>await</c> stays out of the window: it waits for a ThreadPool thread or for xunit's
/// synchronization context (as many threads as cores, shared with the test classes running beside), and a loaded run
/// resumed a test seconds late (a CI run measured 3.45 s for a rescue that takes milliseconds).
/// </summary>
internal static class Timed
{
    /// <summary>
    /// Calls <paramref name="start"/> and awaits its task within <paramref name="guard"/> (a fault or a timeout is
    /// thrown, as an awaited <c>WaitAsync</c> would); returns the time from just before the call to the task's completion.
    /// </summary>
    public static async Task<TimeSpan> UntilCompleted(Func<Task> start, TimeSpan guard)
    {
        long startedAt = Stopwatch.GetTimestamp();
        Task task = start();
        Task<long> completedAt = task.CompletedAt();
        await task.WaitAsync(guard);
        return Stopwatch.GetElapsedTime(startedAt, await completedAt);
    }

    /// <summary>
    /// The <see cref="Stopwatch"/> timestamp at which <paramref name="task"/> completes, whatever its outcome, taken on
    /// the thread that completes it (at once when it already has). Register it before the action that completes the task.
    /// </summary>
    public static Task<long> CompletedAt(this Task task) =>
        task.ContinueWith(
            static _ => Stopwatch.GetTimestamp(),
            CancellationToken.None,
            TaskContinuationOptions.ExecuteSynchronously,
            TaskScheduler.Default);
}
