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

    [Fact]
    public async Task An_arm_back_to_the_applied_deadline_that_replaced_a_claimed_relative_arm_is_applied_by_the_recheck()
    {
        // The timer is linked for its deadline A (the applied word). A 1 s relative arm is popped: the reconcile clears
        // the bit, claims the word and unlinks the entry. Then, between the claim and the link, a racing change arms the
        // timer for A again (the same word as the applied one) without pushing, so the link's swap fails. The recheck
        // must see an armed, unlinked timer: comparing the word with the applied one alone took A for linked.
        var clock = new HookClock();
        using var wheel = new TimerWheel(s_tick, clock, startDriver: false) { RelativeArmsEnabled = true, NurseriesEnabled = false };
        var fired = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        using ITimer timer = wheel.CreateTimer(_ => fired.TrySetResult(), null, TimeSpan.FromMilliseconds(10), Timeout.InfiniteTimeSpan);
        wheel.RunDueTimers();
        wheel.LinkedCount.Should().Be(1);

        timer.Change(TimeSpan.FromSeconds(2), Timeout.InfiniteTimeSpan).Should().BeTrue();
        clock.ReadsBeforeHook = 2; // the pass's first reading, the one after the pop, then the relative arms' reading
        clock.OnNextRead = () =>
        {
            // The clock has not moved since the first arm: 10 ms from now is deadline A again.
            ChangeAsIfRacing(timer, () => timer.Change(TimeSpan.FromMilliseconds(10), Timeout.InfiniteTimeSpan).Should().BeTrue());
            return clock.GetTimestamp();
        };
        wheel.RunDueTimers();
        clock.OnNextRead.Should().BeNull("the hook ran inside the pass");
        wheel.LinkedCount.Should().Be(1, "the recheck links the timer for the arm that replaced the claimed one");

        clock.Advance(TimeSpan.FromMilliseconds(10));
        wheel.RunDueTimers();
        await fired.Task.WaitAsync(s_timeout);
    }

    [Fact]
    public async Task An_arm_back_to_the_applied_deadline_after_an_expiry_that_a_missed_change_dropped_is_applied_by_the_recheck()
    {
        // The owner's drain of its full nursery (a user thread's drain: the recheck is left to the driver) links the
        // timer for A. A racing change to B, whose store that reconcile missed, makes the expiry of A (the driver woke
        // for it before any drain) drop it: the entry is unlinked, the applied word still A. A second racing change,
        // computed before the expiry and landing after it, arms A again. The driver's recheck must link it.
        TimerWheel.UnbindThreadNursery(); // this thread's nursery must be bound to this test's wheel
        var clock = new HookClock();
        using var wheel = new TimerWheel(s_tick, clock, startDriver: false);
        var fired = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        using ITimer timer = wheel.CreateTimer(_ => fired.TrySetResult(), null, TimeSpan.FromMilliseconds(10), Timeout.InfiniteTimeSpan);
        long armedAt = clock.GetTimestamp();
        var others = new ITimer[TimerNursery.Capacity];
        for (int i = 0; i < others.Length; i++)
        {
            others[i] = wheel.CreateTimer(static _ => { }, null, TimeSpan.FromHours(1), Timeout.InfiniteTimeSpan);
        }

        wheel.LinkedCount.Should().Be(TimerNursery.Capacity, "the owner drained its full ring, the timer with it");
        others[^1].Dispose(); // the creation that found the ring full waits in it: out of the counts below
        ChangeAsIfRacing(timer, () => timer.Change(TimeSpan.FromMilliseconds(20), Timeout.InfiniteTimeSpan).Should().BeTrue());

        clock.Advance(TimeSpan.FromMilliseconds(10));
        wheel.RunDueTimers(reconcilePending: false);
        wheel.LinkedCount.Should().Be(TimerNursery.Capacity - 1, "the expiry of A took the timer off the wheel and dropped it");

        clock.OnNextRead = () => armedAt; // the change read the clock before the expiry
        ChangeAsIfRacing(timer, () => timer.Change(TimeSpan.FromMilliseconds(10), Timeout.InfiniteTimeSpan).Should().BeTrue());
        clock.OnNextRead.Should().BeNull("the change read the hooked clock");

        wheel.RunDueTimers();
        wheel.LinkedCount.Should().Be(TimerNursery.Capacity, "the recheck links the timer for A again");
        clock.Advance(s_tick);
        wheel.RunDueTimers();
        await fired.Task.WaitAsync(s_timeout);
        foreach (ITimer other in others)
        {
            other.Dispose();
        }
    }

    [Fact]
    public void A_pushers_inline_drain_leaves_its_recheck_to_the_driver_and_asks_it_back_within_the_reconcile_interval()
    {
        // Every ReconcileBatch-th push drains the stack on the pushing thread, which reconciles the batch but pays no
        // barrier: the entries wait on the recheck list for the driver. A change that missed those reconciles (its
        // store in a store buffer, the bit seen set) is applied only by that recheck, so the inline drain must ask the
        // driver back by itself: the pushes it drained asked nothing (the request is dropped here, as a driver pass in
        // between would have reset it).
        var clock = new ManualClock();
        using var wheel = new TimerWheel(s_tick, clock, startDriver: false) { NurseriesEnabled = false };
        using var batch = new OneShortOfAReconcileBatch(wheel);
        wheel.ForgetDrainRequest();
        using ITimer last = wheel.CreateTimer(static _ => { }, null, TimeSpan.FromMinutes(1), Timeout.InfiniteTimeSpan);
        wheel.LinkedCount.Should().Be(TimerWheel.ReconcileBatch, "the batch's last push drained the stack on its own thread");
        wheel.DrainRequestTimestamp.Should().BeLessThanOrEqualTo(
            clock.Now + StopwatchUnits.From(TimeSpan.FromMilliseconds(4)),
            "the reconciled entries wait for the driver's recheck, which must come within the reconcile interval");
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
