using Scheduler;

namespace Scheduler.Tests.Scheduling;

public sealed class SmokeTests
{
    [Fact]
    public async Task Runs_many_tasks_and_awaits_resume_on_scheduler()
    {
        using var scheduler = new WorkStealingTaskScheduler(2);
        int count = 0;
        var tasks = new Task[10_000];
        for (int i = 0; i < tasks.Length; i++)
        {
            tasks[i] = scheduler.Factory.StartNew(() => Interlocked.Increment(ref count));
        }

        await Task.WhenAll(tasks);
        count.Should().Be(10_000);

        bool onScheduler = await scheduler.Factory.StartNew(async () =>
        {
            await Task.Delay(1);
            return TaskScheduler.Current == scheduler && scheduler.IsWorkerThread;
        }).Unwrap();
        onScheduler.Should().BeTrue();
    }
}
