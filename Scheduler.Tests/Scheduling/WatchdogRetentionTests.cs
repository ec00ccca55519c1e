using System.Runtime.CompilerServices;

namespace Scheduler.Tests.Scheduling;

/// <summary>
/// The watchdog thread (one per process, see SchedulerWatchdog) lets go of a scheduler it watched once that scheduler
/// is disposed and dropped, even when it then sleeps with nothing to watch for a long time.
/// </summary>
[Collection(SerialResourceGroup.Name)]
public sealed class WatchdogRetentionTests
{
    [Fact]
    public void A_disposed_scheduler_the_watchdog_watched_is_collected_while_the_watchdog_sleeps()
    {
        WeakReference scheduler = RunBusyAndDispose();

        Collected.Await(scheduler);
        scheduler.IsAlive.Should().BeFalse("nothing of the process keeps a disposed, dropped scheduler alive");
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private static WeakReference RunBusyAndDispose()
    {
        var scheduler = SchedulerTestHelpers.Create(2);

        // A busy worker arms the watchdog, which then looks at the scheduler every period until both workers are idle.
        scheduler.Factory.StartNew(static () => Thread.Sleep(WorkStealingTaskScheduler.WatchdogPeriod * 4)).Wait();
        SpinWait.SpinUntil(() => !scheduler.IsWatchdogArmed, SchedulerTestHelpers.Timeout).Should().BeTrue("the watchdog disarms once both workers idle");
        Thread.Sleep(WorkStealingTaskScheduler.WatchdogPeriod * 3); // its pass that found the scheduler disarmed is over
        scheduler.Dispose();
        return new WeakReference(scheduler);
    }
}
