using System.Diagnostics;
using System.Runtime.CompilerServices;
using System.Threading.Tasks.Sources;

namespace Scheduler.Sources;

/// <summary>Where a waker's continuation runs: capture at <c>OnCompleted</c>, queue at completion, invoke on arrival.</summary>
internal static class WakerDispatch
{
    private static readonly SendOrPostCallback s_postCallback = static handOff => ((ContextHandOff)handOff!).RunFromTarget();
    private static readonly Action<object?> s_taskCallback = static handOff => ((ContextHandOff)handOff!).RunFromTarget();

    // Set on a thread that must never run user code (the I/O reactor's). A SynchronizationContext's Post and a foreign
    // TaskScheduler's QueueTask are user code: either may run the continuation inline or block, which on that thread
    // would stall every socket it serves. From such a thread those two targets are reached through the ThreadPool.
    [ThreadStatic]
    private static bool t_runsNoUserCode;

    /// <summary>
    /// The scheduling target of an awaiter: a <see cref="WorkStealingTaskScheduler"/> (with the calling worker's
    /// index, or -1 when the caller is not one of its workers), a <see cref="SynchronizationContext"/>, another
    /// <see cref="TaskScheduler"/>, or null for the ThreadPool.
    /// </summary>
    public static object? CaptureSchedulingContext(ValueTaskSourceOnCompletedFlags flags, out int workerIndex)
    {
        workerIndex = -1;
        if ((flags & ValueTaskSourceOnCompletedFlags.UseSchedulingContext) != 0)
        {
            SynchronizationContext? context = SynchronizationContext.Current;
            if (context is WorkStealingSynchronizationContext workerContext)
            {
                // The scheduler's own context (UseSynchronizationContext): its Post would send a completion from another
                // thread to the global queue, where any worker may take it. Go to the awaiting worker, as without it.
                workerContext.Scheduler.TryGetCurrentWorkerIndex(out workerIndex);
                return workerContext.Scheduler;
            }

            if (context is not null && context.GetType() != typeof(SynchronizationContext))
            {
                return context;
            }

            TaskScheduler scheduler = TaskScheduler.Current;
            if (scheduler is WorkStealingTaskScheduler workStealing)
            {
                // On one of its workers: that worker. Under it elsewhere (a LongRunning task): its global queue.
                workStealing.TryGetCurrentWorkerIndex(out workerIndex);
                return workStealing;
            }

            if (scheduler != TaskScheduler.Default)
            {
                return scheduler;
            }
        }

        // No context asked for (or only the default one): a worker still gets its continuation back, which
        // is what keeps I/O and timer wake-ups on the worker that awaited them.
        WorkStealingTaskScheduler? owner = WorkStealingTaskScheduler.CurrentWorkerScheduler;
        if (owner is not null && owner.TryGetCurrentWorkerIndex(out workerIndex))
        {
            return owner;
        }

        // A compensation thread stands in for a blocked worker and runs its scheduler's queued work: its continuations
        // go back to that scheduler too (its global queue; the thread itself leaves when there is none). Sent to the
        // ThreadPool, code awaiting without a context (ConfigureAwait(false), as the connection's loops do) that once
        // ran on such a thread left the scheduler for good: from a pool thread the next such await goes to the pool.
        workerIndex = -1;
        return WorkStealingTaskScheduler.CurrentCompensatingScheduler;
    }

    /// <summary>
    /// Marks the calling thread as one that runs no user code: from now on, continuations it completes for a
    /// <see cref="SynchronizationContext"/> or a foreign <see cref="TaskScheduler"/> are handed to those through the
    /// ThreadPool instead of calling their Post/QueueTask here.
    /// </summary>
    public static void MarkCurrentThreadRunsNoUserCode() => t_runsNoUserCode = true;

    /// <summary>Whether the calling thread was marked by <see cref="MarkCurrentThreadRunsNoUserCode"/> (a timer driver, the I/O reactor).</summary>
    public static bool CurrentThreadRunsNoUserCode => t_runsNoUserCode;

    /// <summary>Queues <paramref name="workItem"/> to its captured target. Never runs it inline.</summary>
    public static void Dispatch(IThreadPoolWorkItem workItem, object? schedulingContext, int workerIndex)
    {
        switch (schedulingContext)
        {
            case null:
                ThreadPool.UnsafeQueueUserWorkItem(workItem, preferLocal: false);
                break;
            case WorkStealingTaskScheduler scheduler:
                if (workerIndex >= 0)
                {
                    scheduler.EnqueueToWorker(workerIndex, workItem);
                }
                else
                {
                    scheduler.Enqueue(workItem);
                }

                break;
            case SynchronizationContext or TaskScheduler when t_runsNoUserCode:
                // Their Post or QueueTask is user code (it may run the continuation inline, or block): from a thread
                // that must never run any (the reactor, a timer driver) they are reached through the ThreadPool.
                ThreadPool.UnsafeQueueUserWorkItem(
                    static target => Dispatch(target.WorkItem, target.Context, -1), (WorkItem: workItem, Context: schedulingContext), preferLocal: false);
                break;
            case SynchronizationContext or TaskScheduler:
                HandOff(workItem, schedulingContext);
                break;
            default:
                throw new UnreachableException($"Unknown scheduling context {schedulingContext.GetType()}.");
        }
    }

    /// <summary>
    /// The continuation of a registration that lost (an operation awaited twice, or a stale token): queued to the
    /// ThreadPool on its own, with its own copy of what it needs, so that its read of the result throws in the awaiting
    /// method. Throwing out of <c>OnCompleted</c> instead would end the process: an <c>await</c>'s builder rethrows it on
    /// the ThreadPool. Allocates, on misuse only.
    /// </summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    public static void QueueLosingContinuation(Action<object?> continuation, object? state, ValueTaskSourceOnCompletedFlags flags)
    {
        ExecutionContext? executionContext = (flags & ValueTaskSourceOnCompletedFlags.FlowExecutionContext) != 0 ? ExecutionContext.Capture() : null;
        ThreadPool.UnsafeQueueUserWorkItem(new DetachedContinuation(continuation, state, executionContext), preferLocal: false);
    }

    /// <summary>Runs a continuation, inside <paramref name="executionContext"/> when one was captured.</summary>
    public static void Invoke(Action<object?> continuation, object? state, ExecutionContext? executionContext)
    {
        if (executionContext is null)
        {
            continuation(state);
            return;
        }

        ExecutionContext? previous = ExecutionContext.Capture();
        if (previous is null)
        {
            // Flow is suppressed on this thread (rare): Run restores exactly that state afterwards, at the
            // price of one allocation for the closure state.
            ExecutionContext.Run(executionContext, s_runContinuation, (continuation, state));
            return;
        }

        // Restore (not Run) keeps the common path allocation-free: Run needs continuation and state in one object.
        ExecutionContext.Restore(executionContext);
        try
        {
            continuation(state);
        }
        finally
        {
            ExecutionContext.Restore(previous);
        }
    }

    private static readonly ContextCallback s_runContinuation = static boxed =>
    {
        var (continuation, state) = ((Action<object?>, object?))boxed!;
        continuation(state);
    };

    /// <summary>
    /// Gives <paramref name="workItem"/> to a <see cref="SynchronizationContext"/> (<c>Post</c>) or a foreign
    /// <see cref="TaskScheduler"/> (a task on it). Either is user code: it may run the item inline, or accept it for
    /// another thread, and still throw. <see cref="ContextHandOff"/> makes sure the item runs exactly once.
    /// </summary>
    private static void HandOff(IThreadPoolWorkItem workItem, object target)
    {
        // One per hand-off (pooled), not per waker: a callback that comes late must find its own dispatch's claim.
        ContextHandOff handOff = ContextHandOff.Rent(workItem);
        try
        {
            if (target is SynchronizationContext context)
            {
                context.Post(s_postCallback, handOff);
            }
            else
            {
                _ = Task.Factory.StartNew(s_taskCallback, handOff, CancellationToken.None, TaskCreationOptions.DenyChildAttach, (TaskScheduler)target);
            }
        }
        catch (Exception exception)
        {
            handOff.TargetThrew(exception);
            return;
        }

        handOff.TargetAccepted();
    }
}
