namespace Scheduler.Sources;

/// <summary>
/// The work item of a <see cref="WakerCore{TResult}"/> created without an owner: one small allocation per
/// asynchronous completion, in exchange for not having to implement <see cref="IThreadPoolWorkItem"/>.
/// </summary>
internal sealed class DetachedContinuation(Action<object?> continuation, object? state, ExecutionContext? executionContext) : IThreadPoolWorkItem
{
    public void Execute() => WakerDispatch.Invoke(continuation, state, executionContext);
}
