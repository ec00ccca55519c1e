namespace Scheduler;

/// <summary>
/// A run of work items that travels through the global queue as <em>one</em> entry: what a worker's deque overflow
/// moves out (half its ring), and what the worker that dequeues it pushes into its own deque.
/// </summary>
/// <remarks>
/// One global enqueue and one dequeue per batch instead of one interlocked enqueue and one interlocked dequeue per
/// item: when a task spawns far more work than its worker can run (spawn_many), every spilled item used to pay both.
/// Only the thread that holds the batch (the spiller, then the single thread that dequeued it) touches its fields,
/// and the global queue's enqueue/dequeue order those hand-offs.
/// </remarks>
internal sealed class WorkItemBatch
{
    public WorkItemBatch(int capacity) => Items = new WorkItem[capacity];

    /// <summary>The items; those in [<see cref="Start"/>, <see cref="End"/>) are still to run, oldest first.</summary>
    public WorkItem[] Items { get; }

    public int Start { get; set; }

    public int End { get; set; }

    public int Count => End - Start;

    /// <summary>Adds the targets still to run (for the debugger's view of queued tasks; racy, never blocks).</summary>
    public void CopyTargetsTo(List<object> destination)
    {
        for (int i = Start; i < End; i++)
        {
            if (Items[i].Target is { } target)
            {
                destination.Add(target);
            }
        }
    }

    /// <summary>The oldest remaining item, left in place: for a move that may fail (a full deque, a refused enqueue) before <see cref="TakeFirst"/>.</summary>
    public ref readonly WorkItem First => ref Items[Start];

    /// <summary>Takes the oldest remaining item, clearing its slot (a pooled batch must not keep work alive).</summary>
    public WorkItem TakeFirst()
    {
        WorkItem item = Items[Start];
        Items[Start] = default;
        Start++;
        return item;
    }
}
