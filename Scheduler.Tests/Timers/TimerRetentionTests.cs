using System.Runtime.CompilerServices;
using Scheduler.Timers;

namespace Scheduler.Tests.Timers;

/// <summary>
/// What the wheel's internal queues let go of once they have handed an entry on: a disposed timer (and so its callback
/// state: a request, a closure, a cancellation source) must become collectable once the driver has reconciled it, not
/// stay reachable from a nursery slot or from another entry's pending-stack link until something overwrites it.
/// </summary>
public sealed class TimerRetentionTests
{
    private static readonly TimeSpan s_tick = TimeSpan.FromMilliseconds(1);

    [Fact]
    public void A_disposed_timer_drained_from_its_nursery_is_not_kept_alive_by_the_ring()
    {
        TimerWheel.UnbindThreadNursery(); // this test thread may still be bound to an earlier test's wheel
        var clock = new ManualClock();
        using var wheel = new TimerWheel(s_tick, clock, startDriver: false);

        // Created armed, so it waits in this thread's nursery; disposed before the drain takes it.
        WeakReference state = CreateAndDisposeArmedTimer(wheel);
        wheel.NurseryCount.Should().Be(1, "the timer went through this thread's nursery");
        wheel.PendingCount.Should().Be(0, "the drain took the disposed timer out of the nursery");

        Collected.Await(state);
        state.IsAlive.Should().BeFalse("a drained nursery slot must not keep its timer (and the timer's state) reachable");
    }

    [Fact]
    public void A_disposed_timer_popped_off_the_pending_stack_is_not_kept_alive_by_the_entry_pushed_after_it()
    {
        var clock = new ManualClock();
        using var wheel = new TimerWheel(s_tick, clock, startDriver: false) { NurseriesEnabled = false };

        // Both go through the stack: the disposed one first, then a long-lived one whose PendingNext points at it.
        WeakReference state = CreateAndDisposeArmedTimer(wheel);
        using ITimer survivor = wheel.CreateTimer(static _ => { }, null, TimeSpan.FromMinutes(5), Timeout.InfiniteTimeSpan);
        wheel.PendingCount.Should().Be(1, "the drain linked the survivor and dropped the disposed timer");

        Collected.Await(state);
        state.IsAlive.Should().BeFalse("a popped entry's stack link must not keep the entry popped after it reachable");
        GC.KeepAlive(survivor);
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private static WeakReference CreateAndDisposeArmedTimer(TimerWheel wheel)
    {
        var state = new object();
        ITimer timer = wheel.CreateTimer(static _ => { }, state, TimeSpan.FromMinutes(1), Timeout.InfiniteTimeSpan);
        timer.Dispose();
        return new WeakReference(state);
    }

    /// <summary>
    /// The driver thread runs its loop once, for the wheel's whole life, and sleeps in it: nothing that loop touched
    /// while firing (the fired timer, its callback, its state) may stay reachable from its frame while it sleeps.
    /// </summary>
    [Fact]
    public void A_fired_and_disposed_timer_is_not_kept_alive_by_the_sleeping_driver_thread()
    {
        using var wheel = new TimerWheel(s_tick);

        WeakReference state = FireOnceAndDispose(wheel);
        Collected.Await(state);

        state.IsAlive.Should().BeFalse("the driver fired the timer and sleeps with nothing to run: it holds nothing of it");
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private static WeakReference FireOnceAndDispose(TimerWheel wheel)
    {
        var state = new object();
        using var fired = new ManualResetEventSlim();
        using (ITimer timer = wheel.CreateTimer(static s => ((ManualResetEventSlim)((object[])s!)[0]).Set(), new object[] { fired, state }, TimeSpan.FromMilliseconds(2), Timeout.InfiniteTimeSpan))
        {
            fired.Wait(TimeSpan.FromSeconds(20)).Should().BeTrue("the timer fires");
        }

        Thread.Sleep(50); // the driver has gone back to sleep with nothing due
        return new WeakReference(state);
    }
}
