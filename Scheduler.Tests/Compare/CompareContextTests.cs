using Scheduler.Benchmarks.Compare;

namespace Scheduler.Tests.Compare;

public sealed class CompareContextTests
{
    private static readonly TimeSpan s_runTimeout = TimeSpan.FromSeconds(30);

    /// <summary>
    /// A workload that never asks for our scheduler has none in its process: its parked workers would still be suspended
    /// and have their stacks walked by every garbage collection, a cost the timer rows' contenders would share unused.
    /// Reading the counters (the runner does around every run) must not create it either.
    /// </summary>
    [Fact]
    public void The_scheduler_is_created_on_first_use_only()
    {
        using var context = new CompareContext(quick: true, s_runTimeout);

        context.SchedulerStatistics.Should().Be(default(SchedulerStatistics));
        context.HasScheduler.Should().BeFalse("reading the counters does not create the scheduler");

        WorkStealingTaskScheduler scheduler = context.Scheduler;
        context.HasScheduler.Should().BeTrue();
        context.Scheduler.Should().BeSameAs(scheduler, "one scheduler per context, reused by every round");
        Task.Factory.StartNew(static () => { }, CancellationToken.None, TaskCreationOptions.None, scheduler).Wait(s_runTimeout).Should().BeTrue();
        // A worker counts a task just after it completed, so the count may trail the Wait by a moment (CI, session 29).
        SpinWait.SpinUntil(() => context.SchedulerStatistics.TasksExecuted >= 1, s_runTimeout).Should().BeTrue("the task is counted");
    }

    [Fact]
    public void A_context_disposes_the_scheduler_it_created_and_leaves_a_given_one_to_its_owner()
    {
        WorkStealingTaskScheduler created;
        using (var owning = new CompareContext(quick: true, s_runTimeout))
        {
            created = owning.Scheduler;
        }

        Action afterDispose = () => Task.Factory.StartNew(static () => { }, CancellationToken.None, TaskCreationOptions.None, created);
        afterDispose.Should().Throw<TaskSchedulerException>().WithInnerException<ObjectDisposedException>();

        var given = new WorkStealingTaskScheduler(new WorkStealingTaskSchedulerOptions { WorkerCount = 1 });
        using var disposeGiven = Scheduling.SchedulerTestHelpers.DisposeBoundedOnExit(given);
        using (var borrowing = new CompareContext(given, quick: true, s_runTimeout))
        {
            borrowing.HasScheduler.Should().BeTrue();
        }

        Task.Factory.StartNew(static () => { }, CancellationToken.None, TaskCreationOptions.None, given).Wait(s_runTimeout).Should().BeTrue("the caller's scheduler outlives the context");
    }
}
