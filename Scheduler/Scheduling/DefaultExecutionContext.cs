namespace Scheduler;

/// <summary>
/// The runtime's default <see cref="ExecutionContext"/> (no <see cref="AsyncLocal{T}"/> values, flow not suppressed),
/// once one of our own threads has seen it: the BCL keeps it internal (<c>ExecutionContext.Default</c>), but
/// <see cref="ExecutionContext.Capture"/> returns that one instance on any thread that holds no context of its own,
/// such as a thread started with <see cref="Thread.UnsafeStart()"/> before it runs any user code.
/// </summary>
/// <remarks>
/// Work that would run in the default context anyway need not keep it. A timer's callback runs as a ThreadPool work
/// item, and the pool starts every work item in the default context (the BCL's <c>ThreadPool.QueueUserWorkItem</c>
/// skips <see cref="ExecutionContext.Run"/> for it the same way): not storing it saves a new timer a reference store
/// and its write barrier, ~0.5 ns of a ~21 ns create+dispose pair (docs/timers.md). A worker's loop runs in the default
/// context too, so a <see cref="SynchronizationContext.Post"/> made in the default context is queued as it is, without a wrapper that
/// carries the context (<see cref="WorkStealingSynchronizationContext"/>). Until a thread has learned it,
/// <see cref="Value"/> is null and the default context is kept like any other: the same behaviour, a little slower.
/// </remarks>
internal static class DefaultExecutionContext
{
    private static ExecutionContext? s_value;

    /// <summary>The default context, or null until a thread called <see cref="LearnOnFreshThread"/>.</summary>
    internal static ExecutionContext? Value => Volatile.Read(ref s_value);

    /// <summary>
    /// Records the default context. Call only first thing on a thread started with <see cref="Thread.UnsafeStart()"/>,
    /// before any user code could set an <see cref="AsyncLocal{T}"/> or suppress the flow there.
    /// </summary>
    internal static void LearnOnFreshThread()
    {
        if (Volatile.Read(ref s_value) is null)
        {
            // Every such thread captures the same instance, so racing writers agree.
            Volatile.Write(ref s_value, ExecutionContext.Capture());
        }
    }
}
