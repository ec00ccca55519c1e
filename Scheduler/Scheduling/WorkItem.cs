using System.Runtime.CompilerServices;

namespace Scheduler;

/// <summary>
/// One unit of work in a scheduler queue. A struct rather than an object so that callback-shaped
/// work (<see cref="System.IO.Pipelines.PipeScheduler"/>, <see cref="SynchronizationContext.Post"/>)
/// is queued without allocating a wrapper per call.
/// </summary>
/// <remarks>
/// <see cref="Target"/> is a <see cref="Task"/>, an <see cref="IThreadPoolWorkItem"/> (pooled wakers
/// queue themselves), an <see cref="Action{T}"/> of object or a <see cref="SendOrPostCallback"/>
/// (both invoked with <see cref="State"/>).
/// </remarks>
internal readonly struct WorkItem
{
    public readonly object? Target;
    public readonly object? State;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public WorkItem(object target, object? state = null)
    {
        Target = target;
        State = state;
    }

    public bool IsEmpty
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        get => Target is null;
    }
}
