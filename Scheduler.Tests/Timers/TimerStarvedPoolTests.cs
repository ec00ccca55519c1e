using Scheduler.Tests.Scheduling;
using Scheduler.Timers;

namespace Scheduler.Tests.Timers;

/// <summary>
/// A wheel timer's callbacks when the ThreadPool has no thread to run them: ticks due meanwhile merge into the callback
/// already waiting, as with the BCL's timers, so a starved pool delays a periodic timer and never banks a burst of its
/// callbacks. Found in session 31: a <see cref="PeriodicTimer"/> over the wheel, changed from 20 ms to an hour, ticked 27
/// times in the next 300 ms after the test host's ThreadPool had been busy (a burst that reached its waits as they came;
/// here the ticks are counted directly). The test blocks every ThreadPool thread, so it runs alone.
/// </summary>
[Collection(SerialResourceGroup.Name)]
public sealed class TimerStarvedPoolTests
{
    private static readonly TimeSpan s_starvation = TimeSpan.FromMilliseconds(300);

    [Theory]
    [InlineData(true)]
    [InlineData(false)] // the BCL's timer, for parity
    public async Task Ticks_due_while_the_ThreadPool_is_starved_run_one_callback_not_a_burst(bool wheelTimer)
    {
        using var wheel = new TimerWheel();
        TimeProvider provider = wheelTimer ? wheel : TimeProvider.System;
        int calls = 0;
        using ITimer timer = provider.CreateTimer(_ => Interlocked.Increment(ref calls), null, TimeSpan.FromMilliseconds(5), TimeSpan.FromMilliseconds(5));
        await WaitUntilAsync(() => Volatile.Read(ref calls) >= 2);

        int during;
        using (ThreadPoolStarvation.Begin())
        {
            Thread.Sleep(s_starvation); // about 60 periods
            timer.Change(Timeout.InfiniteTimeSpan, Timeout.InfiniteTimeSpan);
            during = Volatile.Read(ref calls); // after the Change: a thread the pool adds meanwhile may run a callback before it
        }

        await Task.Delay(200);
        // The wheel's timer: one (the callback queued when the pool ran out, which may still run once after Change). The BCL's:
        // two or three measured (its queue's firing pass is itself queued, and queues the callbacks); a loose bound, for it
        // is not ours. Before the fix the wheel's ran 298 and 370 callbacks here, one per period.
        (Volatile.Read(ref calls) - during).Should().BeLessThanOrEqualTo(wheelTimer ? 1 : 6, "the ticks due while no thread was free merged into the callback already queued");
    }

    private static async Task WaitUntilAsync(Func<bool> condition)
    {
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(10);
        while (!condition())
        {
            DateTime.UtcNow.Should().BeBefore(deadline);
            await Task.Delay(5);
        }
    }
}
