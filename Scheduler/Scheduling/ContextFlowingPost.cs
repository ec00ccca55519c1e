namespace Scheduler;

/// <summary>
/// A <see cref="SynchronizationContext.Post"/> made in an <see cref="ExecutionContext"/> other than the default: the
/// callback, its state and the poster's context, run inside that context (<see cref="WorkStealingSynchronizationContext"/>).
/// </summary>
/// <remarks>
/// Only posts that carry <see cref="AsyncLocal{T}"/> values pay for this object; a post in the default context, or with
/// flow suppressed, is queued bare (<see cref="Capture"/>), because the worker runs it in its loop's context, which is
/// the default one. An <c>async</c> method's own resumption does not need the poster's context (its box restores the
/// method's), but it cannot be told from a callback that does (an awaiter's <c>OnCompleted</c>) without leaning on
/// runtime internals, so it is carried too — as the base <see cref="SynchronizationContext"/> and the ThreadPool's
/// <c>QueueUserWorkItem</c> carry it.
/// </remarks>
internal sealed class ContextFlowingPost : IThreadPoolWorkItem
{
    private static readonly ContextCallback s_invoke = static state =>
    {
        var post = (ContextFlowingPost)state!;
        post._callback(post._state);
    };

    private readonly SendOrPostCallback _callback;
    private readonly object? _state;
    private readonly ExecutionContext _context;

    private ContextFlowingPost(SendOrPostCallback callback, object? state, ExecutionContext context)
    {
        _callback = callback;
        _state = state;
        _context = context;
    }

    /// <summary>The work item for a post of <paramref name="callback"/> made on this thread, in its current context.</summary>
    public static WorkItem Capture(SendOrPostCallback callback, object? state)
    {
        ExecutionContext? context = ExecutionContext.Capture();
        return context is null || context == DefaultExecutionContext.Value
            ? WorkItem.ForCallback(callback, state)
            : WorkItem.ForThreadPoolWorkItem(new ContextFlowingPost(callback, state, context));
    }

    /// <summary>Runs the callback in the poster's context; <see cref="ExecutionContext.Run"/> puts the worker's back.</summary>
    public void Execute() => ExecutionContext.Run(_context, s_invoke, this);
}
