using Scheduler.Timers;

namespace Scheduler.Tests.Timers;

/// <summary>
/// The driver's side of the wheel (TimerWheel.Driver.cs): when a sleeping driver is woken for an insert, what it counts,
/// and its test seams. Written against the survivors of a Stryker run over that file (session 44). The wake-up tests use
/// a hosted wheel, whose "driver" is the test thread itself: the wheel publishes the plan each step returns, and a wake-up
/// is a call of the host's callback, counted exactly.
/// </summary>
public sealed class TimerDriverTests
{
    [Fact]
    public void The_driver_is_one_named_background_thread_and_Dispose_returns_once_it_has_ended()
    {
        // A foreground driver would keep a process whose code forgot to dispose its wheel from ever exiting.
        var wheel = new TimerWheel();
        Thread driver = wheel.DriverThread!;
        driver.Should().NotBeNull();
        driver.IsBackground.Should().BeTrue("an undisposed wheel must not keep the process alive");
        driver.Name.Should().Be("TimerWheel driver", "a thread dump or a profiler names what it sees");
        driver.IsAlive.Should().BeTrue();
        wheel.Dispose();
        driver.IsAlive.Should().BeFalse("Dispose joins the driver: nothing of the wheel runs after it returns");
    }

    private static readonly TimeSpan Tick = TimeSpan.FromMilliseconds(1);

    // Kills: WakeDriverIfEarlierLocked, its WakeSleeper call removed (a timer inserted while the driver sleeps past its
    // due time, as an inline drain of a full batch does, fired only at the old plan) and `<` made `<=` (an insert at the
    // planned tick itself woke the sleeper for nothing).
    [Fact]
    public void An_insert_wakes_the_sleeper_only_when_it_is_due_before_the_planned_wake()
    {
        int wakes = 0;
        using var wheel = new TimerWheel(Tick, () => Interlocked.Increment(ref wakes));
        wheel.RunHostedDriverStep(out long now).Should().Be(long.MaxValue, "an empty wheel sleeps until woken");

        // Within the wheel's first level (64 ticks), so that the host plans to wake at the start of the entry's own tick
        // (a later level's slot starts earlier than its entries' ticks). The host is this thread: nothing moves the plan
        // between two steps, however long the thread is held up.
        var first = new RecordingEntry();
        first.Schedule(wheel, now + StopwatchUnits.From(TimeSpan.FromMilliseconds(40)), now);
        Volatile.Read(ref wakes).Should().Be(1, "the host planned to sleep for ever");

        long plan = wheel.RunHostedDriverStep(out now);
        if (first.FireCount == 0)
        {
            plan.Should().BeInRange(first.DeadlineTimestamp, first.DeadlineTimestamp + StopwatchUnits.From(Tick), "the host wakes at the start of the entry's due tick, the first to start at or after its deadline");
            var sameTick = new RecordingEntry();
            sameTick.Schedule(wheel, first.DeadlineTimestamp, now);
            Volatile.Read(ref wakes).Should().Be(1, "an entry due in the tick the host plans to wake at needs no earlier wake-up");
        }

        var earlier = new RecordingEntry();
        earlier.Schedule(wheel, now + StopwatchUnits.From(TimeSpan.FromMilliseconds(20)), now);
        Volatile.Read(ref wakes).Should().Be(2, "this one is due 20 ms before the planned wake (or the host planned to sleep for ever)");
    }

    // Kills (TimerWheel.Hosted.cs): the hosted constructor starting a driver thread of its own or losing its null check;
    // RunHostedDriverStep's fast path removed or its `plan != DriverAwake` flipped (every step took the lock and
    // advanced the wheel), and its wake-up count removed or made `--`.
    [Fact]
    public void A_hosted_wheel_has_no_driver_and_a_step_with_nothing_new_takes_the_fast_path()
    {
        FluentActions.Invoking(() => new TimerWheel(Tick, wakeHost: null!)).Should().Throw<ArgumentNullException>().WithParameterName("wakeHost");

        int wakes = 0;
        using var wheel = new TimerWheel(Tick, () => Interlocked.Increment(ref wakes));
        wheel.IsHosted.Should().BeTrue();
        wheel.DriverThread.Should().BeNull("the host's own thread drives the wheel");
        wheel.DriverWakeups.Should().Be(0);

        long now = 0;
        for (int i = 0; i < 10; i++)
        {
            wheel.RunHostedDriverStep(out now).Should().Be(long.MaxValue);
        }

        wheel.DriverWakeups.Should().Be(0, "an empty hosted wheel starts with the plan to sleep until woken, and nothing asked for an earlier wake-up: each step reads the plan and returns it");

        // An insert before the plan takes it down (and wakes the host): the next step is a full one, then fast again.
        var entry = new RecordingEntry();
        entry.Schedule(wheel, now + StopwatchUnits.From(TimeSpan.FromSeconds(30)), now);
        Volatile.Read(ref wakes).Should().Be(1);
        long plan = wheel.RunHostedDriverStep(out _);
        plan.Should().BeLessThan(long.MaxValue, "the host must come back for the entry");
        wheel.DriverWakeups.Should().Be(1, "that step took the lock and made a new plan");
        wheel.RunHostedDriverStep(out _).Should().Be(plan);
        wheel.DriverWakeups.Should().Be(1);
    }

    // Kills: DriverLoop, `_driverWakeups++` removed or made `--` (the count the idle-CPU tests bound from above could
    // not grow, or shrank, and every such bound passed).
    [Fact]
    public async Task The_driver_counts_the_wake_up_that_fires_a_timer()
    {
        // A driver thread that starts late (a loaded machine) fires a timer already due in its first pass, before it has
        // ever slept. So the counted timer is armed only after a first one fired: the driver is then in its loop, and it
        // publishes its plan and sleeps microseconds after firing, long before the second is due.
        using var wheel = new TimerWheel(Tick);
        await FireOnceAsync(wheel, TimeSpan.FromMilliseconds(1));
        long before = wheel.DriverWakeups;

        await FireOnceAsync(wheel, TimeSpan.FromMilliseconds(100));

        wheel.DriverWakeups.Should().BeGreaterThan(before, "the driver slept until the timer was due, then woke to fire it");
    }

    private static async Task FireOnceAsync(TimerWheel wheel, TimeSpan dueTime)
    {
        var fired = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        using ITimer timer = wheel.CreateTimer(_ => fired.TrySetResult(), null, dueTime, Timeout.InfiniteTimeSpan);
        await fired.Task.WaitAsync(TimeSpan.FromSeconds(30));
    }

    // Kills: TryGetNextWakeTimestamp, `any ? StartOfTick(tick) : 0` made `StartOfTick(tick)` (an empty wheel reported a
    // wake-up time beside its "none").
    [Fact]
    public void An_empty_wheel_reports_no_next_wake_and_a_zero_timestamp()
    {
        using var wheel = new TimerWheel(Tick, new ManualClock(), startDriver: false);

        wheel.TryGetNextWakeTimestamp(out long timestamp).Should().BeFalse();
        timestamp.Should().Be(0);
    }

    // Kills: RunDueTimers, the early return for a disposed wheel removed (the test seam drained a closed pending stack and
    // advanced a wheel that disposal had emptied).
    [Fact]
    public void RunDueTimers_on_a_disposed_wheel_fires_nothing_and_does_not_throw()
    {
        var clock = new ManualClock();
        var wheel = new TimerWheel(Tick, clock, startDriver: false) { NurseriesEnabled = false };
        var entry = new RecordingEntry();
        entry.Schedule(wheel, clock.GetTimestamp() + StopwatchUnits.From(TimeSpan.FromMilliseconds(5)), clock.GetTimestamp());
        using ITimer timer = wheel.CreateTimer(static _ => { }, null, TimeSpan.FromMilliseconds(5), Timeout.InfiniteTimeSpan);
        wheel.Dispose();
        clock.Advance(TimeSpan.FromSeconds(1));

        FluentActions.Invoking(() => wheel.RunDueTimers()).Should().NotThrow();
        FluentActions.Invoking(() => wheel.RunDueTimers(reconcilePending: false)).Should().NotThrow();
        entry.FireCount.Should().Be(0, "disposal took the entry off the wheel");
    }
}
