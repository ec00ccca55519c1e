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
/// (both invoked with <see cref="State"/>), or a <see cref="WorkItemBatch"/>; made only by the factory methods,
/// which tag the first two kinds.
/// </remarks>
internal readonly struct WorkItem
{
    // Kind tags, stored in State for the two kinds that have no state of their own. The worker's dispatch on them is a
    // compare against a constant; a type test of Target would call the runtime's cast helpers (a class-hierarchy walk
    // for Task, whose subclasses are the async state-machine boxes, and an interface lookup for a waker) on every item.
    private static readonly object s_taskKind = new();
    private static readonly object s_threadPoolWorkItemKind = new();

    public readonly object? Target;
    public readonly object? State;

    /// <summary>
    /// An untagged item: still run correctly (by a type test of <paramref name="target"/>), but the scheduler's own
    /// paths use the factories below, whose tags spare the worker that test. Queue tests use this directly.
    /// </summary>
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

    /// <summary>The task, when this item is one (see <see cref="ForTask"/>).</summary>
    public Task? AsTask
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        get => State == s_taskKind ? Unsafe.As<Task>(Target) : null;
    }

    /// <summary>The pooled work item, when this item is one (see <see cref="ForThreadPoolWorkItem"/>).</summary>
    public IThreadPoolWorkItem? AsThreadPoolWorkItem
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        get => State == s_threadPoolWorkItemKind ? Unsafe.As<IThreadPoolWorkItem>(Target) : null;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static WorkItem ForTask(Task task) => new(task, s_taskKind);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static WorkItem ForThreadPoolWorkItem(IThreadPoolWorkItem workItem) => new(workItem, s_threadPoolWorkItemKind);

    /// <summary>An <see cref="Action{T}"/> of object or a <see cref="SendOrPostCallback"/>, invoked with <paramref name="state"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static WorkItem ForCallback(Delegate callback, object? state) => new(callback, state);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static WorkItem ForBatch(WorkItemBatch batch) => new(batch, null);
}
