namespace Scheduler.Tests.Scheduling;

/// <summary>
/// Work items that are not tasks (pipe callbacks, wakers, posts) run directly in the worker loop. What one of them leaves
/// on its thread — an <see cref="AsyncLocal{T}"/> value (say, <c>Activity.Current</c>), a synchronization context — must
/// not be seen by the next item, as on the ThreadPool, which resets both after every work item.
/// </summary>
public sealed class WorkerContextIsolationTests
{
    private static readonly AsyncLocal<string?> s_local = new();

    [Fact]
    public async Task A_callback_that_leaves_an_async_local_set_does_not_leak_it_into_later_items()
    {
        var scheduler = SchedulerTestHelpers.Create(1);
        await using var disposeScheduler = SchedulerTestHelpers.DisposeWithin(scheduler);
        var seen = new TaskCompletionSource<string?>(TaskCreationOptions.RunContinuationsAsynchronously);
        var seenByTask = new TaskCompletionSource<string?>(TaskCreationOptions.RunContinuationsAsynchronously);
        var seenByWaker = new TaskCompletionSource<string?>(TaskCreationOptions.RunContinuationsAsynchronously);
        using (ExecutionContext.SuppressFlow())
        {
            scheduler.PipeScheduler.Schedule(_ => s_local.Value = "leaked", null);
            scheduler.PipeScheduler.Schedule(_ => seen.SetResult(s_local.Value), null);
            scheduler.EnqueueToWorker(0, new SchedulerTestHelpers.RecordingWorkItem(() => seenByWaker.SetResult(s_local.Value)));
        }

        (await seen.Task.WithTimeout()).Should().BeNull("the next callback on the worker must not see the previous one's value");
        (await seenByWaker.Task.WithTimeout()).Should().BeNull();

        // A task that captured no context (flow suppressed) runs in the worker's context as it is.
        Task task;
        using (ExecutionContext.SuppressFlow())
        {
            scheduler.PipeScheduler.Schedule(_ => s_local.Value = "leaked again", null);
            task = scheduler.Factory.StartNew(() => seenByTask.SetResult(s_local.Value));
        }

        await task.WithTimeout();
        (await seenByTask.Task.WithTimeout()).Should().BeNull();
    }

    [Fact]
    public async Task A_callback_that_installs_a_synchronization_context_does_not_leave_it_on_the_worker()
    {
        var scheduler = SchedulerTestHelpers.Create(1);
        await using var disposeScheduler = SchedulerTestHelpers.DisposeWithin(scheduler);
        var foreign = new SynchronizationContext();
        var seen = new TaskCompletionSource<SynchronizationContext?>(TaskCreationOptions.RunContinuationsAsynchronously);
        scheduler.PipeScheduler.Schedule(_ => SynchronizationContext.SetSynchronizationContext(foreign), null);
        scheduler.PipeScheduler.Schedule(_ => seen.SetResult(SynchronizationContext.Current), null);

        (await seen.Task.WithTimeout()).Should().BeNull("the worker's own context (none: UseSynchronizationContext is off) is back for the next item");
    }
}
