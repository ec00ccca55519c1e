namespace Scheduler.Tests.Scheduling;

/// <summary>
/// Thread state a task changes on its worker does not stay for later tasks (the ThreadPool resets it after every work
/// item; found by a review): a task that made its worker a foreground thread kept the process alive despite background
/// workers, and a lowered priority or a new name stayed too. Our workers put it back before they park.
/// </summary>
public sealed class WorkerThreadStateTests
{
    [Fact]
    public async Task Background_priority_and_name_changed_by_a_task_are_put_back_once_the_worker_parks()
    {
        var scheduler = SchedulerTestHelpers.Create(1);
        await using var disposeScheduler = SchedulerTestHelpers.DisposeWithin(scheduler);
        string? original = await scheduler.Factory.StartNew(() =>
        {
            Thread thread = Thread.CurrentThread;
            string? name = thread.Name;
            thread.IsBackground = false;
            thread.Priority = ThreadPriority.BelowNormal;
            thread.Name = "renamed by a task";
            return name;
        }).WithTimeout();

        await SchedulerTestHelpers.WaitUntilAsync(() => scheduler.IsWorkerParked(0));
        (bool background, ThreadPriority priority, string? name) = await scheduler.Factory.StartNew(() =>
        {
            Thread thread = Thread.CurrentThread;
            return (thread.IsBackground, thread.Priority, thread.Name);
        }).WithTimeout();

        background.Should().BeTrue("workers are background threads unless the options say otherwise");
        priority.Should().Be(ThreadPriority.Normal);
        name.Should().Be(original);
    }
}
