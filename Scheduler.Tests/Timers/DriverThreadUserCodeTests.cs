using Scheduler.Timers;

namespace Scheduler.Tests.Timers;

/// <summary>
/// The wheel's driver thread never runs user code: a delay awaited under a <see cref="TaskScheduler"/> whose QueueTask
/// runs the task inline (legal, common in tests and UI adapters) must not resume on the driver (found for the I/O
/// reactor's thread by a review; the driver had the same hole).
/// </summary>
public sealed class DriverThreadUserCodeTests
{
    [Fact]
    public async Task A_TaskScheduler_that_runs_queued_tasks_inline_never_gets_a_delay_continuation_onto_the_driver()
    {
        using var wheel = new TimerWheel();
        // From a ThreadPool thread: no SynchronizationContext (the test runner's would take precedence over the scheduler).
        Task<string?> resumedOn = Task.Run(() => Task.Factory.StartNew(
            async () =>
            {
                await wheel.DelayAsync(TimeSpan.FromMilliseconds(5));
                return Thread.CurrentThread.Name;
            },
            CancellationToken.None,
            TaskCreationOptions.DenyChildAttach,
            new InlineTaskScheduler()).Unwrap());

        string? name = await resumedOn.WaitAsync(TimeSpan.FromSeconds(30));
        name.Should().NotBe("TimerWheel driver", "the scheduler's QueueTask is user code, here running the continuation inline");
    }
}
