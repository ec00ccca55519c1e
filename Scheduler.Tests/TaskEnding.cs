namespace Scheduler.Tests;

/// <summary>Waiting for a task's end whatever its outcome, without leaving a fault unobserved.</summary>
internal static class TaskEnding
{
    /// <summary>
    /// A task that completes when <paramref name="task"/> ends, in whatever state, having read its exception.
    /// <c>ContinueWith(_ => { })</c> waits the same but leaves a fault unobserved: the finalizer then reports it through
    /// the process-wide <see cref="TaskScheduler.UnobservedTaskException"/>, where a test watching for the library's own
    /// unobserved faults met one of these once (a CI run: a peer's send that had ended with EPIPE).
    /// </summary>
    public static Task Ended(this Task task) =>
        task.ContinueWith(
            static ended => _ = ended.Exception,
            CancellationToken.None,
            TaskContinuationOptions.ExecuteSynchronously,
            TaskScheduler.Default);

    /// <summary>
    /// How <paramref name="task"/> ends within <paramref name="bound"/>: null when it succeeds, its exception when it
    /// fails or is cancelled. A task still running at the bound throws <see cref="TimeoutException"/>: a hang is never
    /// mistaken for a failure of the kind a test expects.
    /// </summary>
    public static async Task<Exception?> ExceptionWithin(this Task task, TimeSpan bound)
    {
        try
        {
            await task.WaitAsync(bound);
            return null;
        }
        catch (TimeoutException e) when (!task.IsCompleted)
        {
            throw new TimeoutException($"The task neither completed nor failed within {bound}.", e);
        }
        catch (Exception e)
        {
            return e;
        }
    }
}
