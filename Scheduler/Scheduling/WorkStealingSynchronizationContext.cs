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
/// <para>Where a post goes: <c>Task.Yield</c> arrives through <see cref="Post"/> and must be served FIFO (the worker's
/// inbox), or a yield loop would re-run itself ahead of everything else. Every other post is an <c>await</c>
/// resuming, which goes where a resumed task would go: the posting worker's LIFO slot (cache-hot, no interlocked
/// operation), or the global queue from other threads. Yields are recognised by their callback, discovered once by
/// yielding under a probe context (<see cref="YieldCallbacks"/>). If a future runtime posted yields some other way,
/// they would be served LIFO — still capped by the LIFO slot's limit and the fairness turns, so degraded fairness,
/// never starvation.</para>
/// <para>A post runs in the poster's <see cref="ExecutionContext"/>, as every synchronization context's does (the base
/// one queues to the ThreadPool, which captures it): <c>TaskAwaiter.OnCompleted</c> and <c>YieldAwaiter.OnCompleted</c>
/// promise to flow it and leave that to <see cref="Post"/>. Posted in the default context (no <see cref="AsyncLocal{T}"/>
/// values, the case of every <c>await</c> in code that sets none) or with flow suppressed, a post still travels bare
/// in the queue's slot; otherwise a small wrapper carries the context (<see cref="ContextFlowingPost"/>).</para>
/// </remarks>
internal sealed class WorkStealingSynchronizationContext(WorkStealingTaskScheduler scheduler) : SynchronizationContext
{
    private static readonly SendOrPostCallback?[] s_yieldCallbacks = YieldCallbacks.Discover();

    public WorkStealingTaskScheduler Scheduler => scheduler;

    public override void Post(SendOrPostCallback d, object? state)
    {
        ArgumentNullException.ThrowIfNull(d);
        WorkItem item = ContextFlowingPost.Capture(d, state);
        if (IsYield(d))
        {
            scheduler.EnqueuePosted(item);
        }
        else
        {
            scheduler.Enqueue(item);
        }
    }

    private static bool IsYield(SendOrPostCallback callback)
    {
        SendOrPostCallback?[] known = s_yieldCallbacks;
        return ReferenceEquals(callback, known[0]) || ReferenceEquals(callback, known[1]);
    }

    public override void Send(SendOrPostCallback d, object? state)
    {
        ArgumentNullException.ThrowIfNull(d);
        // On one of the scheduler's own threads, run it here: posting and blocking would wait for another thread to take
        // it (a compensation thread that posted used to wait for the next one, a standstill later; a worker for itself).
        if (scheduler.IsWorkerThread || scheduler.IsCompensationThread)
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
