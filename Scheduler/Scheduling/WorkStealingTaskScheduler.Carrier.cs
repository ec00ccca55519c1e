namespace Scheduler;

// Workers and compensation threads run their loops inside a task of this scheduler (a "carrier"), so that work which is
// not a task itself — waker continuations, pipe callbacks, synchronization-context posts — sees this scheduler as
// TaskScheduler.Current, and an `await` in it comes back here instead of going to the ThreadPool. Tasks run by a loop set
// and restore the current task themselves. DenyChildAttach: nothing may attach to a carrier as a child.
public sealed partial class WorkStealingTaskScheduler
{
    /// <summary>
    /// On a thread this scheduler just started, before its loop: what the thread's first work item expects to find (the
    /// default execution context learned for posts made in it, the scheduler's synchronization context when it has one).
    /// </summary>
    private void PrepareLoopThread()
    {
        DefaultExecutionContext.LearnOnFreshThread();
        if (WorkerContext is { } context)
        {
            SynchronizationContext.SetSynchronizationContext(context);
        }
    }

    /// <summary>The carrier task of a loop, to run synchronously on its thread.</summary>
    private static Task NewCarrier(Action<object?> loop, object state) =>
        new(loop, state, CancellationToken.None, TaskCreationOptions.DenyChildAttach);

    /// <summary>
    /// After the carrier ran: when the loop itself failed (not an item, which are caught and raised one by one), says why
    /// the thread is gone, the way an item's unhandled exception is said, instead of leaving it in a task nobody reads.
    /// </summary>
    private static void RaiseLoopFault(Task carrier)
    {
        if (carrier.Exception is { } fault)
        {
            Unhandled.Raise(fault.InnerExceptions.Count == 1 ? fault.InnerExceptions[0] : fault);
        }
    }
}
