using Scheduler.Timers;

namespace Scheduler.Tests.Timers;

/// <summary>
/// A change writes its timer's intent and then reads the Enqueued bit with plain accesses; a reconcile clears the bit
/// and then reads the intent. On x86 both may miss (the change's store still in its core's store buffer): the change
/// does not push, the reconcile applies the older intent. The wheel's recheck, behind a process-wide barrier, must
/// apply such a change. These tests put a wheel in exactly that state: the hook, inside the drain after the reconcile
/// read the intent, sets the bit the way the racing change saw it, changes the timer, and clears the bit again. Each runs
/// with the timers' first reconcile coming from the pending stack and from the creating thread's nursery.
/// </summary>
public sealed class TimerRecheckTests
{
    private static readonly TimeSpan s_tick = TimeSpan.FromMilliseconds(1);
    private static readonly TimeSpan s_timeout = TimeSpan.FromSeconds(10);

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task An_arm_that_missed_the_reconcile_and_the_stack_is_applied_by_the_recheck(bool nurseries)
    {
        TimerWheel.UnbindThreadNursery(); // with nurseries on, this thread's must be bound to this test's wheel
        var clock = new HookClock();
        using var wheel = new TimerWheel(s_tick, clock, startDriver: false) { RelativeArmsEnabled = true, NurseriesEnabled = nurseries };
        var fired = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        using ITimer timer = wheel.CreateTimer(_ => fired.TrySetResult(), null, TimeSpan.FromSeconds(2), Timeout.InfiniteTimeSpan);

        // The pass reads the clock in RunDueTimers, after the pop (when the new timer went onto the stack rather than
        // into this thread's nursery) and after the reconciles (to measure the relative arm). That last reading comes
        // after the reconcile cleared the bit and read the 2 s arm.
        clock.ReadsBeforeHook = ReadsBeforeLink(nurseries);
        clock.OnNextRead = () =>
        {
            ChangeAsIfRacing(timer, () => timer.Change(TimeSpan.FromMilliseconds(10), Timeout.InfiniteTimeSpan).Should().BeTrue());
            return clock.GetTimestamp();
        };
        wheel.RunDueTimers();
        clock.OnNextRead.Should().BeNull("the hook ran inside the pass");

        clock.Advance(TimeSpan.FromMilliseconds(11));
        wheel.RunDueTimers();
        await fired.Task.WaitAsync(s_timeout);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task A_disarm_that_missed_the_reconcile_and_the_stack_unlinks_the_timer_at_the_recheck(bool nurseries)
    {
        TimerWheel.UnbindThreadNursery(); // with nurseries on, this thread's must be bound to this test's wheel
        var clock = new HookClock();
        using var wheel = new TimerWheel(s_tick, clock, startDriver: false) { RelativeArmsEnabled = true, NurseriesEnabled = nurseries };
        int fired = 0;

        // The disarmed timer's arm is absolute (linked as its reconcile reads it); a second timer's relative arm makes
        // the pass read the clock a third time, after both reconciles, which is where the disarm goes in.
        using ITimer timer = wheel.CreateTimer(_ => Interlocked.Increment(ref fired), null, TimeSpan.FromMilliseconds(5), Timeout.InfiniteTimeSpan);
        using ITimer relative = wheel.CreateTimer(_ => { }, null, TimeSpan.FromSeconds(2), Timeout.InfiniteTimeSpan);
        clock.ReadsBeforeHook = ReadsBeforeLink(nurseries);
        clock.OnNextRead = () =>
        {
            ChangeAsIfRacing(timer, () => timer.Change(Timeout.InfiniteTimeSpan, Timeout.InfiniteTimeSpan).Should().BeTrue());
            return clock.GetTimestamp();
        };
        wheel.RunDueTimers();
        clock.OnNextRead.Should().BeNull("the hook ran inside the pass");
        wheel.LinkedCount.Should().Be(1, "the recheck unlinked the disarmed timer; the relative one stays");

        clock.Advance(TimeSpan.FromMilliseconds(10));
        wheel.RunDueTimers();
        await Task.Delay(50);
        Volatile.Read(ref fired).Should().Be(0);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void Dispose_that_missed_the_reconcile_and_the_stack_unlinks_the_timer_at_the_recheck(bool nurseries)
    {
        TimerWheel.UnbindThreadNursery(); // with nurseries on, this thread's must be bound to this test's wheel
        var clock = new HookClock();
        using var wheel = new TimerWheel(s_tick, clock, startDriver: false) { RelativeArmsEnabled = true, NurseriesEnabled = nurseries };
        ITimer timer = wheel.CreateTimer(_ => { }, null, TimeSpan.FromSeconds(2), Timeout.InfiniteTimeSpan);
        clock.ReadsBeforeHook = ReadsBeforeLink(nurseries);
        clock.OnNextRead = () =>
        {
            // Dispose reads the bit after its store, like a change; the reconcile had read the 2 s arm before it.
            ChangeAsIfRacing(timer, timer.Dispose);
            return clock.GetTimestamp();
        };

        wheel.RunDueTimers();
        clock.OnNextRead.Should().BeNull("the hook ran inside the pass");
        wheel.LinkedCount.Should().Be(0, "a disposed timer does not stay linked for its 2 s");
    }

    /// <summary>Readings a pass takes before the one that links relative arms: no pop reading when the new timers waited in a nursery.</summary>
    private static int ReadsBeforeLink(bool nurseries) => nurseries ? 1 : 2;

    /// <summary>Runs <paramref name="change"/> seeing the Enqueued bit set, as a change whose intent store the reconcile missed saw it.</summary>
    private static void ChangeAsIfRacing(ITimer timer, Action change)
    {
        var entry = (TimerEntry)timer;
        entry.Flags.Should().Be(0, "the reconcile cleared the bit before reading the intent");
        entry.Flags = 1;
        change();
        entry.Flags = 0;
    }
}
