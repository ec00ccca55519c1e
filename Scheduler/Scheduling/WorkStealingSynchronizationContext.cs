namespace Scheduler;

/// <summary>
/// The <see cref="SynchronizationContext"/> installed on every worker of a <see cref="WorkStealingTaskScheduler"/>.
/// </summary>
/// <remarks>
/// <para>Why it exists: an <c>await</c> inside a task on a custom <see cref="TaskScheduler"/> makes the BCL allocate
/// a continuation object and then a whole <see cref="Task"/> per resumption, queued through
/// <see cref="TaskScheduler"/>.<c>QueueTask</c>. With a context installed, an <c>await</c> captures the context
/// instead: one small continuation object, run inline when the awaited task completes on a worker of the same
/// scheduler, otherwise posted here — and a post travels in the queue's struct slot, with no allocation.</para>
/// <para>Posts are FIFO (the worker's inbox, or the global queue from other threads): <c>Task.Yield</c> arrives
/// through <see cref="Post"/>, and a LIFO post would let a yield loop re-run itself forever.</para>
/// </remarks>
internal sealed class WorkStealingSynchronizationContext(WorkStealingTaskScheduler scheduler) : SynchronizationContext
{
    public WorkStealingTaskScheduler Scheduler => scheduler;

    public override void Post(SendOrPostCallback d, object? state)
    {
        ArgumentNullException.ThrowIfNull(d);
        scheduler.EnqueuePosted(new WorkItem(d, state));
    }

    public override void Send(SendOrPostCallback d, object? state)
    {
        ArgumentNullException.ThrowIfNull(d);
        if (scheduler.IsWorkerThread)
        {
            d(state);
            return;
        }

        using var done = new ManualResetEventSlim();
        Exception? failure = null;
        Post(_ =>
        {
            try
            {
                d(state);
            }
            catch (Exception e)
            {
                failure = e;
            }
            finally
            {
                done.Set();
            }
        }, null);
        done.Wait();
        if (failure is not null)
        {
            System.Runtime.ExceptionServices.ExceptionDispatchInfo.Throw(failure);
        }
    }

    public override SynchronizationContext CreateCopy() => this;
}
