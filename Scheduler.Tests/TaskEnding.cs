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
}
