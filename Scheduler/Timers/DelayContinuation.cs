using Scheduler.Sources;

namespace Scheduler.Timers;

/// <summary>
/// The work item that carries a completed delay's continuation to its worker (or context, or the ThreadPool). A slot
/// cannot be a work item itself (it is a struct inside a chunk), so one of these is rented from a pool when a delay
/// completes and goes back as soon as it runs: it exists only between completion and resumption.
/// </summary>
internal sealed class DelayContinuation : IThreadPoolWorkItem
{
    private static readonly ValueTaskSourcePool<DelayContinuation> s_pool = new(static () => new DelayContinuation(), 1024);

    private Action<object?>? _continuation;
    private object? _state;
    private ExecutionContext? _executionContext;

    private DelayContinuation()
    {
    }

    public static DelayContinuation Rent(Action<object?> continuation, object? state, ExecutionContext? executionContext)
    {
        DelayContinuation item = s_pool.Rent();
        item._continuation = continuation;
        item._state = state;
        item._executionContext = executionContext;
        return item;
    }

    public void Execute()
    {
        Action<object?> continuation = _continuation!;
        object? state = _state;
        ExecutionContext? executionContext = _executionContext;
        _continuation = null;
        _state = null;
        _executionContext = null;
        s_pool.Return(this);
        WakerDispatch.Invoke(continuation, state, executionContext);
    }
}
