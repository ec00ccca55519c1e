using System.IO.Pipelines;

namespace Scheduler;

/// <summary>
/// Runs <see cref="System.IO.Pipelines"/> callbacks on a <see cref="WorkStealingTaskScheduler"/>. The callback and
/// its state travel in the queue's struct slot, so <see cref="Schedule"/> allocates nothing.
/// </summary>
internal sealed class WorkStealingPipeScheduler(WorkStealingTaskScheduler scheduler) : PipeScheduler
{
    public override void Schedule(Action<object?> action, object? state)
    {
        ArgumentNullException.ThrowIfNull(action);
        // Pipes schedule reader/writer continuations here; throwing after Dispose would corrupt the pipe,
        // so late callbacks still run (on a worker while any is alive, else on the ThreadPool).
        scheduler.Enqueue(WorkItem.ForCallback(action, state));
    }
}
