using Scheduler.Timers;

namespace Scheduler.Tests.Timers;

/// <summary>
/// Tests written from a Stryker.NET run over Scheduler/Timers: each one checks a behaviour that a surviving mutant
/// (named in its comment) showed no test checked, and passes on the unmutated code. Pure arithmetic and wheels driven
/// by explicit ticks, no clock.
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

    // Kills: HierarchicalWheel.cs FastForward, `tick > _elapsed` mutated to `<` or negated, or its body removed, and
    // PrepareInsert, the `FastForward(...)` call removed — an empty wheel no longer caught up after an idle spell, so a
    // new entry was linked on a high level measured from a stale tick and cascaded down through the whole gap; and
    // PrepareInsert's `Math.Max(dueTick, _elapsed + 1)` mutated to `Math.Min` (a future due tick became now: a delay,
    // whose slot keeps this tick, completed early) or to `_elapsed - 1` (a delay's overdue tick was linked on a tick
    // already processed, behind the current slot, and expired up to a revolution of its level late).
    [Fact]
    public void An_insert_into_an_idle_empty_wheel_catches_it_up_to_one_tick_before_now_or_the_due_tick()
    {
        var wheel = new TimingWheel();
        wheel.PrepareInsert(1_000_050, 1_000_000).Should().Be(1_000_050);
        wheel.Elapsed.Should().Be(999_999, "the wheel catches up to one tick short of now");
        var entry = new RecordingEntry();
        wheel.Insert(entry, 1_000_050);
        wheel.TryGetNextExpiration(out long next).Should().BeTrue();
        next.Should().Be(1_000_000, "51 ticks ahead lies on level 1, in the slot starting at now, not on level 3 from tick 0");

        // An overdue change: caught up only to one before its own due tick, so the next advance expires it.
        var overdue = new TimingWheel();
        overdue.PrepareInsert(400, 1_000).Should().Be(400);
        overdue.Elapsed.Should().Be(399);

        // A wheel that holds entries does not move: an overdue tick is raised to the next unprocessed one.
        wheel.PrepareInsert(5, 2_000_000).Should().Be(1_000_000);
        wheel.Elapsed.Should().Be(999_999);
    }

    // Kills: HierarchicalWheel.cs Cleared, `Array.Clear(_occupied)` removed — after RemoveAll (disposal) the occupancy
    // bits of the emptied lists stayed set, so the wheel still reported a next expiration with nothing in it; and
    // TimingWheel.cs RemoveAll, which no timer-wheel test reached without a TimerWheel around it (its loop bound, its
    // `index++`, its `entry is not null`, `removed.Add(entry)` and `Cleared()` mutated).
    [Fact]
    public void Removing_every_entry_at_disposal_leaves_a_wheel_that_reports_no_work()
    {
        var wheel = new TimingWheel();
        wheel.Insert(new RecordingEntry(), 10);
        wheel.Insert(new RecordingEntry(), 5_000);
        wheel.Insert(new RecordingEntry(), 1L << 40);
        var removed = new ExpiredTimers();

        wheel.RemoveAll(removed);

        removed.Count.Should().Be(3);
        wheel.Count.Should().Be(0);
        wheel.TryGetNextExpiration(out _).Should().BeFalse();
    }

    // Kills: HierarchicalWheel.cs AdvancedTo, its body `_elapsed = nowTick` removed or its guard `nowTick > _elapsed`
    // negated, and TimingWheel.cs Advance, the `AdvancedTo(nowTick)` call removed — an advance that found no list due
    // left Elapsed behind (new entries went on levels measured from a stale tick), or a clock read that stepped
    // backwards moved Elapsed back over ticks already processed; and TimingWheel.cs Insert's `Elapsed + 1` mutated to
    // `Elapsed - 1` — a passed tick was linked behind the current slot and expired up to a revolution of its level late.
    [Fact]
    public void An_advance_moves_the_processed_tick_forward_only_and_later_inserts_never_land_on_a_passed_tick()
    {
        var wheel = new TimingWheel();
        var expired = new ExpiredTimers();
        wheel.Insert(new RecordingEntry(), 5_000);

        wheel.Advance(1_000, expired);
        expired.Count.Should().Be(0);
        wheel.Elapsed.Should().Be(1_000, "every tick up to the advance has been processed, due list or not");

        wheel.Advance(10, expired); // a clock that stepped backwards
        wheel.Elapsed.Should().Be(1_000, "ticks already processed are not processed again");

        var late = new RecordingEntry();
        wheel.Insert(late, 500);
        late.DueTick.Should().Be(1_001, "a passed tick becomes the next unprocessed one");
    }

    // Kills: ExpiredTimers.cs, which the wheel tests reached only through small batches: Pairs.Add's `Array.Resize` of
    // the items or of the tokens removed or sized `Count / 2` (a batch past 64 entries threw, or lost the token of
    // every entry past the first 64), RemoveAt's `Count--` removed or made `Count++`, and IsEmpty's `&&` made `||` or
    // either `== 0` made `!= 0` (a batch holding only delays read as empty, so the driver fired nothing).
    [Fact]
    public void A_batch_grows_past_its_first_arrays_keeping_every_token_and_removes_by_moving_the_last_entry()
    {
        var batch = new ExpiredTimers();
        batch.IsEmpty.Should().BeTrue();
        var entries = new RecordingEntry[100];
        for (int i = 0; i < entries.Length; i++)
        {
            entries[i] = new RecordingEntry { Id = i };
            batch.Add(entries[i]);
            batch.SetToken(i, 1_000 + i);
            batch.AddDelay(i * 3);
            batch.SetDelayGeneration(i, 2_000 + i);
        }

        batch.Count.Should().Be(100);
        batch.DelayCount.Should().Be(100);
        for (int i = 0; i < entries.Length; i++)
        {
            batch[i].Should().BeSameAs(entries[i]);
            batch.GetToken(i).Should().Be(1_000 + i);
            batch.GetDelay(i).Should().Be(i * 3);
            batch.GetDelayGeneration(i).Should().Be(2_000 + i);
        }

        batch.RemoveAt(0);
        batch.Count.Should().Be(99);
        batch[0].Should().BeSameAs(entries[99], "order within a batch does not matter: the last entry fills the gap");
        batch.GetToken(0).Should().Be(1_099);

        batch.Clear();
        batch.IsEmpty.Should().BeTrue();
        batch.AddDelay(7);
        batch.IsEmpty.Should().BeFalse("a batch of delays alone still has work");
        batch.Clear();
        batch.Add(entries[0]);
        batch.IsEmpty.Should().BeFalse("a batch of timers alone still has work");
    }
}
