using FluentAssertions;

namespace Scheduler.Tests.Scheduling;

/// <summary>
/// The worker's dispatch on a queued item: the scheduler's own paths tag tasks and pooled work items (so the worker
/// needs no type test), and an untagged item of any kind still runs through the type tests.
/// </summary>
public sealed class WorkItemTests
{
    [Fact]
    public void Factories_tag_tasks_and_pooled_work_items_and_nothing_else()
    {
        var task = new Task(static () => { });
        var pooled = new SchedulerTestHelpers.RecordingWorkItem(static () => { });
        Action<object?> callback = static _ => { };

        WorkItem.ForTask(task).AsTask.Should().BeSameAs(task);
        WorkItem.ForTask(task).AsThreadPoolWorkItem.Should().BeNull();
        WorkItem.ForThreadPoolWorkItem(pooled).AsThreadPoolWorkItem.Should().BeSameAs(pooled);
        WorkItem.ForThreadPoolWorkItem(pooled).AsTask.Should().BeNull();

        WorkItem posted = WorkItem.ForCallback(callback, "state");
        posted.AsTask.Should().BeNull();
        posted.AsThreadPoolWorkItem.Should().BeNull();
        posted.State.Should().Be("state");

        // A task handed over as a callback's state is state, not a task to run.
        WorkItem.ForCallback(callback, task).AsTask.Should().BeNull();
        new WorkItem(task).AsTask.Should().BeNull("an untagged item is dispatched by a type test instead");
    }

    [Fact]
    public async Task Every_kind_runs_tagged_or_untagged()
    {
        var scheduler = SchedulerTestHelpers.Create(workers: 1);
        await using var disposeScheduler = SchedulerTestHelpers.DisposeWithin(scheduler);
        var ran = new List<string>();
        var pooled = new SchedulerTestHelpers.RecordingWorkItem(() => ran.Add("pooled"));
        var untaggedPooled = new SchedulerTestHelpers.RecordingWorkItem(() => ran.Add("untagged pooled"));
        Action<object?> action = state => ran.Add((string)state!);
        SendOrPostCallback post = state => ran.Add((string)state!);

        scheduler.RunWorkItem(WorkItem.ForThreadPoolWorkItem(pooled)).Should().BeTrue();
        scheduler.RunWorkItem(new WorkItem(untaggedPooled)).Should().BeTrue();
        scheduler.RunWorkItem(WorkItem.ForCallback(action, "action")).Should().BeTrue();
        scheduler.RunWorkItem(WorkItem.ForCallback(post, "post")).Should().BeTrue();
        scheduler.RunWorkItem(new WorkItem(new object())).Should().BeFalse("an unknown target is not work");

        ran.Should().Equal("pooled", "untagged pooled", "action", "post");

        // Tasks run only where the scheduler lets them: queue them through its own path and watch them complete.
        Task tagged = Task.Factory.StartNew(() => ran.Add("task"), CancellationToken.None, TaskCreationOptions.None, scheduler);
        await tagged.WithTimeout();
        ran.Should().EndWith("task");
    }
}
