using System.Diagnostics;
using Scheduler.Timers;

namespace Scheduler.Tests.Timers;

/// <summary>The wheel on a hand-moved clock with no driver: deterministic, and years pass in microseconds.</summary>
public sealed class TimerWheelClockTests
{
    private static long Units(TimeSpan span) => StopwatchUnits.From(span);

    [Fact]
    public void A_timer_fires_at_its_exact_deadline_and_not_one_timestamp_unit_earlier()
    {
        var clock = new ManualClock();
        using var wheel = new TimerWheel(TimeSpan.FromMilliseconds(1), clock, startDriver: false);
        long deadline = clock.Now + Units(TimeSpan.FromMilliseconds(2.5));
        var entry = new RecordingEntry { Clock = clock };
        entry.Schedule(wheel, deadline, clock.Now);

        clock.AdvanceUnits(deadline - clock.Now - 1);
        wheel.RunDueTimers();
        entry.FireCount.Should().Be(0, "one unit before the deadline is too early");

        clock.AdvanceUnits(1);
        wheel.RunDueTimers();
        entry.FireCount.Should().Be(0, "deadlines round up to whole ticks: 2.5 ms fires at the start of tick 3");

        clock.Advance(TimeSpan.FromMilliseconds(0.5));
        wheel.RunDueTimers();
        entry.FireCount.Should().Be(1);
        entry.FiredAt.Should().BeGreaterThanOrEqualTo(deadline);
        wheel.PendingCount.Should().Be(0);
    }

    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    public void Long_delays_across_every_level_fire_in_order_never_early_and_at_most_one_tick_late(int seed)
    {
        var random = new Random(seed);
        var clock = new ManualClock();
        TimeSpan tick = TimeSpan.FromMilliseconds(1);
        using var wheel = new TimerWheel(tick, clock, startDriver: false);
        long start = clock.Now;

        // From 1 ms to ~4 years: every level, the cascade and the top-level wrap (the span is ~2.2 years).
        var entries = new List<(RecordingEntry Entry, long Deadline)>();
        for (int i = 0; i < 3000; i++)
        {
            double milliseconds = Math.Pow(2, random.NextDouble() * 37);
            long deadline = start + Units(TimeSpan.FromMilliseconds(milliseconds));
            var entry = new RecordingEntry { Id = i, Clock = clock };
            entry.Schedule(wheel, deadline, start);
            entries.Add((entry, deadline));
        }

        long tickUnits = Units(tick);
        int runs = RunUntilEmpty(wheel, clock);

        foreach ((RecordingEntry entry, long deadline) in entries)
        {
            entry.FiredAt.Should().BeGreaterThanOrEqualTo(deadline, "never early");
            (entry.FiredAt - deadline).Should().BeLessThanOrEqualTo(tickUnits, "at most one tick late when the driver wakes on time");
        }

        entries.Should().OnlyContain(e => e.Entry.FireCount == 1);
        runs.Should().BeLessThan(3000 * 7, "each entry costs at most one wake per level plus its expiry");
    }

    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    public void Wheel_timers_across_every_level_fire_once_never_early_and_at_most_one_tick_late(int seed)
    {
        // The same walk with the ITimers of CreateTimer, which keep no due tick of their own (they compute it from
        // their deadline, and the wheel clamps it when it links them): every level, every cascade.
        var random = new Random(seed);
        var clock = new ManualClock();
        TimeSpan tick = TimeSpan.FromMilliseconds(1);
        using var wheel = new TimerWheel(tick, clock, startDriver: false);
        long start = clock.Now;
        const int Count = 400;
        var firedAt = new long[Count];
        var fireCounts = new int[Count];
        var deadlines = new long[Count];
        var timers = new ITimer[Count];
        for (int i = 0; i < Count; i++)
        {
            // 1 ms to ~49 days (the longest due time an ITimer takes): levels 0 to 5 of 64-slot levels at 1 ms.
            TimeSpan due = TimeSpan.FromMilliseconds(Math.Floor(Math.Pow(2, random.NextDouble() * 31.9)));
            deadlines[i] = start + Units(due);
            int index = i;
            timers[i] = wheel.CreateTimer(
                _ =>
                {
                    Volatile.Write(ref firedAt[index], clock.Now);
                    Interlocked.Increment(ref fireCounts[index]);
                },
                null,
                due,
                Timeout.InfiniteTimeSpan);
        }

        wheel.RunDueTimers();
        int runs = RunUntilEmpty(wheel, clock, () =>
        {
            // Callbacks run on the ThreadPool: let every one that is due by now record the clock before it moves on.
            int due = deadlines.Count(d => d <= clock.Now);
            SpinWait.SpinUntil(() => fireCounts.Sum() >= due, TimeSpan.FromSeconds(10)).Should().BeTrue("every due timer's callback runs");
        });

        long tickUnits = Units(tick);
        for (int i = 0; i < Count; i++)
        {
            fireCounts[i].Should().Be(1);
            firedAt[i].Should().BeGreaterThanOrEqualTo(deadlines[i], "never early");
            (firedAt[i] - deadlines[i]).Should().BeLessThanOrEqualTo(tickUnits, "at most one tick late when the driver wakes on time");
        }

        runs.Should().BeLessThan(Count * 7, "each timer costs at most one wake per level plus its expiry");
        foreach (ITimer timer in timers)
        {
            timer.Dispose();
        }
    }

    /// <summary>
    /// Moves the clock the way the driver does, to the start of the next occupied slot (cascades included), and runs
    /// what is due, until nothing is pending; <paramref name="afterEachRun"/> is called after every run. Returns the runs.
    /// </summary>
    private static int RunUntilEmpty(TimerWheel wheel, ManualClock clock, Action? afterEachRun = null)
    {
        int runs = 0;
        while (wheel.PendingCount > 0)
        {
            wheel.TryGetNextWakeTimestamp(out long next).Should().BeTrue();
            if (next > clock.Now)
            {
                clock.AdvanceUnits(next - clock.Now);
            }

            wheel.RunDueTimers();
            runs++;
            afterEachRun?.Invoke();
        }

        return runs;
    }

    [Fact]
    public void Cancel_unlinks_and_the_entry_never_fires()
    {
        var clock = new ManualClock();
        using var wheel = new TimerWheel(TimeSpan.FromMilliseconds(1), clock, startDriver: false);
        var kept = new RecordingEntry { Clock = clock };
        var canceled = new RecordingEntry { Clock = clock };
        long deadline = clock.Now + Units(TimeSpan.FromSeconds(5));
        kept.Schedule(wheel, deadline, clock.Now);
        canceled.Schedule(wheel, deadline, clock.Now);
        wheel.PendingCount.Should().Be(2);

        canceled.Cancel(wheel);
        canceled.IsLinked.Should().BeFalse();
        wheel.PendingCount.Should().Be(1);

        clock.Advance(TimeSpan.FromSeconds(6));
        wheel.RunDueTimers();
        kept.FireCount.Should().Be(1);
        canceled.FireCount.Should().Be(0);
    }

    [Fact]
    public void A_small_tick_resolves_sub_millisecond_deadlines()
    {
        var clock = new ManualClock();
        using var wheel = new TimerWheel(TimeSpan.FromTicks(1000), clock, startDriver: false); // 0.1 ms
        var entry = new RecordingEntry { Clock = clock };
        long deadline = clock.Now + Units(TimeSpan.FromMilliseconds(0.25));
        entry.Schedule(wheel, deadline, clock.Now);

        clock.Advance(TimeSpan.FromMilliseconds(0.2));
        wheel.RunDueTimers();
        entry.FireCount.Should().Be(0);

        clock.Advance(TimeSpan.FromMilliseconds(0.1));
        wheel.RunDueTimers();
        entry.FireCount.Should().Be(1);
        (entry.FiredAt - deadline).Should().BeLessThanOrEqualTo(Units(TimeSpan.FromMilliseconds(0.1)));
    }

    [Fact]
    public void Saturated_deadlines_are_accepted_and_stay_pending()
    {
        var clock = new ManualClock();
        using var wheel = new TimerWheel(TimeSpan.FromMilliseconds(1), clock, startDriver: false);
        var entry = new RecordingEntry { Clock = clock };
        entry.Schedule(wheel, wheel.DeadlineAfter(clock.Now, TimeSpan.MaxValue), clock.Now);

        clock.Advance(TimeSpan.FromDays(3 * 365));
        wheel.RunDueTimers();
        entry.FireCount.Should().Be(0);
        entry.IsLinked.Should().BeTrue();
    }

    [Theory]
    [InlineData(10_000)] // 1 ms
    [InlineData(1)] // 100 ns: the wheel's span is then under two hours
    public async Task Timers_and_delays_of_days_to_years_through_the_public_API_fire_at_their_deadline_and_never_before(long tickInTimeSpanTicks)
    {
        // Relative arms on (as on the real clock): a long arm is measured from its reconciliation, here at the clock's
        // reading when the first RunDueTimers drains it. Each due time is far beyond the wheel's span at the small
        // tick, and TimeSpan.MaxValue (like anything past the intent's 2^59-unit range) means never.
        var clock = new ManualClock();
        using var wheel = new TimerWheel(TimeSpan.FromTicks(tickInTimeSpanTicks), clock, startDriver: false) { RelativeArmsEnabled = true, NurseriesEnabled = false };
        TimeSpan[] dues = [TimeSpan.FromMilliseconds(uint.MaxValue - 1), TimeSpan.FromDays(400), TimeSpan.FromDays(3_650)];
        var fired = new long[dues.Length];
        var timers = new List<ITimer>();
        for (int i = 0; i < dues.Length; i++)
        {
            int index = i;
            timers.Add(wheel.CreateTimer(_ => Volatile.Write(ref fired[index], clock.Now), null, dues[i], Timeout.InfiniteTimeSpan));
        }

        int neverFired = 0;
        timers.Add(wheel.CreateTimer(_ => Interlocked.Increment(ref neverFired), null, TimeSpan.MaxValue, Timeout.InfiniteTimeSpan));
        long start = clock.Now;
        Task delay = wheel.DelayAsync(TimeSpan.FromDays(400)).AsTask();
        wheel.RunDueTimers();

        long delayDeadline = start + Units(TimeSpan.FromDays(400));
        for (int i = 0; i < dues.Length; i++)
        {
            // Up to one unit short of the deadline in big jumps: nothing may fire.
            long deadline = start + Units(dues[i]);
            long remaining = deadline - 1 - clock.Now;
            for (int step = 0; step < 40; step++)
            {
                clock.AdvanceUnits(remaining / 40);
                wheel.RunDueTimers();
            }

            clock.AdvanceUnits(deadline - 1 - clock.Now);
            wheel.RunDueTimers();
            await Task.Delay(20);
            Volatile.Read(ref fired[i]).Should().Be(0, $"timer {i} ({dues[i]}) is not due one unit before its deadline");
            delay.IsCompleted.Should().Be(clock.Now >= delayDeadline, "the 400-day delay completes at its deadline and not before");

            // Its tick: it fires (the delay's deadline is the same 400 days as the second timer's).
            clock.AdvanceUnits(Units(TimeSpan.FromTicks(tickInTimeSpanTicks)) + 1);
            wheel.RunDueTimers();
            SpinWait.SpinUntil(() => Volatile.Read(ref fired[i]) != 0, TimeSpan.FromSeconds(10)).Should().BeTrue($"timer {i} ({dues[i]}) fires at its deadline");
            Volatile.Read(ref fired[i]).Should().BeGreaterThanOrEqualTo(deadline);
        }

        await delay.WaitAsync(TimeSpan.FromSeconds(10));
        clock.Advance(TimeSpan.FromDays(10 * 365));
        wheel.RunDueTimers();
        await Task.Delay(20);
        Volatile.Read(ref neverFired).Should().Be(0, "TimeSpan.MaxValue never fires");
        wheel.PendingCount.Should().Be(1, "only the TimeSpan.MaxValue timer is left");
        foreach (ITimer timer in timers)
        {
            timer.Dispose();
        }
    }

    /// <summary>
    /// A driver that wakes late reconciles changes whose deadlines have passed. The first entry linked into an empty
    /// wheel moves the wheel's processed tick up to the clock (so that it is not cascaded through the idle gap); an
    /// overdue entry linked after it in the same pass must still expire in that pass, not one whole tick later.
    /// The pending stacks are LIFO: the long arm, pushed last, is linked first.
    /// </summary>
    [Fact]
    public async Task An_overdue_timer_linked_after_a_later_one_in_a_late_pass_fires_in_that_pass()
    {
        var clock = new ManualClock();
        using var wheel = new TimerWheel(TimeSpan.FromMilliseconds(100), clock, startDriver: false) { NurseriesEnabled = false };
        int shortFired = 0;
        int longFired = 0;
        using ITimer overdue = wheel.CreateTimer(_ => Interlocked.Increment(ref shortFired), null, TimeSpan.FromMilliseconds(5), Timeout.InfiniteTimeSpan);
        using ITimer later = wheel.CreateTimer(_ => Interlocked.Increment(ref longFired), null, TimeSpan.FromMilliseconds(500), Timeout.InfiniteTimeSpan);
        Task overdueDelay = wheel.DelayAsync(TimeSpan.FromMilliseconds(5)).AsTask();
        Task laterDelay = wheel.DelayAsync(TimeSpan.FromMilliseconds(500)).AsTask();

        // Due at the start of tick 1 (100 ms); the pass comes in tick 2.
        clock.Advance(TimeSpan.FromMilliseconds(250));
        wheel.RunDueTimers();

        SpinWait.SpinUntil(() => Volatile.Read(ref shortFired) == 1, TimeSpan.FromSeconds(10))
            .Should().BeTrue("the 5 ms timer was overdue when the pass linked it, so that pass fires it (not the next tick's)");
        await overdueDelay.WaitAsync(TimeSpan.FromSeconds(10));
        Volatile.Read(ref longFired).Should().Be(0);
        laterDelay.IsCompleted.Should().BeFalse();
        _ = laterDelay.Ended(); // the wheel's disposal below fails it: observed, never left to the finalizer
    }

    [Fact]
    public void Conversions_round_deadlines_up_and_saturate()
    {
        var clock = new ManualClock(start: 0);
        using var wheel = new TimerWheel(TimeSpan.FromMilliseconds(1), clock, startDriver: false);
        long tickUnits = Units(TimeSpan.FromMilliseconds(1));

        wheel.TickOf(tickUnits - 1).Should().Be(0);
        wheel.TickOf(tickUnits).Should().Be(1);
        wheel.DueTickOf(1).Should().Be(1);
        wheel.DueTickOf(tickUnits).Should().Be(1);
        wheel.DueTickOf(tickUnits + 1).Should().Be(2);
        wheel.StartOfTick(long.MaxValue / 2).Should().Be(long.MaxValue);
        wheel.ToTimestampUnits(TimeSpan.MaxValue).Should().Be(long.MaxValue);
        wheel.DeadlineAfter(long.MaxValue - 5, TimeSpan.FromSeconds(1)).Should().Be(long.MaxValue);
        TimerWheel.MillisecondsUntil(0, 1).Should().Be(1, "a sub-millisecond wait still sleeps (no spinning)");
        TimerWheel.MillisecondsUntil(0, long.MaxValue).Should().Be(int.MaxValue);
    }
}
