using Scheduler.Timers;

namespace Scheduler.Tests.Timers;

/// <summary>
/// Tests written from a Stryker.NET run over Scheduler/Timers: each one checks a behaviour that a surviving mutant
/// (named in its comment) showed no test checked, and passes on the unmutated code. Pure arithmetic, no clock.
/// </summary>
public sealed class StrykerSurvivorTests
{
    // Kills: TimerIntent.cs AbsoluteOf, `deadline == long.MaxValue || overflowed ? MaxValue : ...` mutated to `false ? ...`
    // or to `&&` — a deadline whose distance from the origin overflows (a TimeProvider with negative timestamps, a
    // deadline near long.MaxValue) was clamped to 0 and decoded as due at the origin instead of never; and Clamp's
    // `value < 0 ? 0` mutated to `false ? 0` — a deadline before the origin (a clock that stepped backwards) decoded to
    // a garbage deadline far in the future instead of due at once.
    [Fact]
    public void An_absolute_intent_past_the_value_range_means_never_and_one_before_the_origin_means_at_the_origin()
    {
        const long origin = 1_000;
        TimerIntent.DeadlineOf(TimerIntent.AbsoluteOf(long.MaxValue, origin), origin).Should().Be(long.MaxValue);
        TimerIntent.DeadlineOf(TimerIntent.AbsoluteOf(origin + TimerIntent.MaxValue + 5, origin), origin).Should().Be(long.MaxValue);

        // deadline - origin overflows: still never, not "due at once".
        const long negativeOrigin = long.MinValue + 10;
        long overflowing = TimerIntent.AbsoluteOf(long.MaxValue - 1, negativeOrigin);
        TimerIntent.IsAbsolute(overflowing).Should().BeTrue();
        TimerIntent.DeadlineOf(overflowing, negativeOrigin).Should().Be(long.MaxValue);

        // A deadline before the origin is due at once: it decodes to the origin, never to something later.
        long early = TimerIntent.AbsoluteOf(origin - 50, origin);
        TimerIntent.IsAbsolute(early).Should().BeTrue();
        TimerIntent.DeadlineOf(early, origin).Should().Be(origin);
    }

    // Kills: TimerIntent.cs FiredFrom, `intent & ~((1L << ValueShift) - 1)` mutated (`&` to `|`, the `~` dropped, `- 1`
    // to `+ 1`, `<<` to `>>` or `>>>`) — the fired word kept the absolute kind (a later identical arm would equal it) or
    // lost its deadline. A fired word keeps the deadline, has the Fired kind, and drops the periodic bit.
    [Fact]
    public void A_fired_intent_keeps_the_deadline_and_drops_the_kind_and_the_periodic_bit()
    {
        const long origin = 77;
        long absolute = TimerIntent.AbsoluteOf(origin + 4_096, origin);
        long fired = TimerIntent.FiredFrom(absolute | TimerIntent.Periodic);

        fired.Should().Be(TimerIntent.FiredFrom(absolute));
        fired.Should().NotBe(absolute, "the next arm for the same deadline must differ from the fired word");
        (fired & 3).Should().Be(TimerIntent.Fired);
        TimerIntent.IsAbsolute(fired).Should().BeFalse();
        TimerIntent.IsRelative(fired).Should().BeFalse();
        TimerIntent.DeadlineOf(fired, origin).Should().Be(origin + 4_096);
    }
}
