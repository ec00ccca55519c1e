using Scheduler.Timers;

namespace Scheduler.Tests.Timers;

public sealed class TimingWheelTests
{
    private sealed class Entry : TimerEntry
    {
        internal override long DeadlineTimestamp { get; set; }

        internal override long DueTick { get; set; }

        internal override long OnExpired(TimerWheel wheel, long nowTimestamp) => 0;

        internal override void Fire(long token)
        {
        }
    }

    private static Entry At(long dueTick) => new() { DueTick = dueTick };

    [Theory]
    [InlineData(0, 1, 0)]
    [InlineData(0, 63, 0)]
    [InlineData(0, 64, 1)]
    [InlineData(0, 4095, 1)]
    [InlineData(0, 4096, 2)]
    [InlineData(100, 127, 0)]
    [InlineData(63, 64, 1)]
    [InlineData(0, (1L << 30) - 1, 4)]
    [InlineData(0, 1L << 30, 5)]
    [InlineData(0, TimingWheel.MaxSpan, 5)]
    [InlineData(TimingWheel.MaxSpan - 3, TimingWheel.MaxSpan + 5, 5)]
    public void Level_is_the_highest_six_bit_group_that_differs(long elapsed, long when, int level)
    {
        TimingWheel.LevelFor(elapsed, when).Should().Be(level);
    }

    [Fact]
    public void Next_expiration_is_the_slot_start_of_the_earliest_entry_on_each_level()
    {
        var wheel = new TimingWheel();
        wheel.TryGetNextExpiration(out _).Should().BeFalse();

        wheel.Insert(At(5000), 5000);
        wheel.TryGetNextExpiration(out long tick).Should().BeTrue();
        tick.Should().Be(4096, "level 2 slots are 4096 ticks wide and 5000 lies in the slot starting at 4096");

        wheel.Insert(At(70), 70);
        wheel.TryGetNextExpiration(out tick).Should().BeTrue();
        tick.Should().Be(64, "a level 1 entry comes before every level 2 entry");

        wheel.Insert(At(3), 3);
        wheel.TryGetNextExpiration(out tick).Should().BeTrue();
        tick.Should().Be(3);
        wheel.Count.Should().Be(3);
    }

    [Fact]
    public void Advance_cascades_a_far_entry_down_and_expires_it_exactly_at_its_tick()
    {
        var wheel = new TimingWheel();
        Entry entry = At((3L << 24) + (5L << 12) + 7);
        wheel.Insert(entry, entry.DueTick);
        var expired = new ExpiredTimers();

        wheel.Advance(entry.DueTick - 1, expired);
        expired.Count.Should().Be(0);
        entry.IsLinked.Should().BeTrue();
        wheel.TryGetNextExpiration(out long next).Should().BeTrue();
        next.Should().Be(entry.DueTick, "after cascading it sits on level 0 in its own slot");

        wheel.Advance(entry.DueTick, expired);
        expired.Count.Should().Be(1);
        expired[0].Should().BeSameAs(entry);
        entry.IsLinked.Should().BeFalse();
        wheel.Count.Should().Be(0);
    }

    [Fact]
    public void Remove_is_constant_time_unlinking_and_clears_the_occupancy_bit()
    {
        var wheel = new TimingWheel();
        Entry a = At(10);
        Entry b = At(10);
        Entry c = At(10);
        wheel.Insert(a, a.DueTick);
        wheel.Insert(b, b.DueTick);
        wheel.Insert(c, c.DueTick);

        wheel.Remove(b);
        wheel.Remove(a);
        wheel.TryGetNextExpiration(out long tick).Should().BeTrue();
        tick.Should().Be(10);
        wheel.Remove(c);
        wheel.TryGetNextExpiration(out _).Should().BeFalse();
        wheel.Count.Should().Be(0);
    }

    [Fact]
    public void Entries_beyond_the_wheel_span_wrap_on_the_top_level_and_still_expire_on_time()
    {
        var wheel = new TimingWheel();
        wheel.FastForward(12345);
        Entry far = At(12345 + (TimingWheel.MaxSpan * 3) + 17);
        Entry near = At(12345 + (1L << 31));
        wheel.Insert(far, far.DueTick);
        wheel.Insert(near, near.DueTick);
        var expired = new ExpiredTimers();

        wheel.TryGetNextExpiration(out long next).Should().BeTrue();
        next.Should().BeLessThanOrEqualTo(near.DueTick, "the near entry is found before the wrapped far one");

        wheel.Advance(near.DueTick, expired);
        expired.Count.Should().Be(1);
        expired[0].Should().BeSameAs(near);
        expired.Clear();

        int steps = 0;
        while (wheel.TryGetNextExpiration(out next) && next < far.DueTick)
        {
            wheel.Advance(next, expired);
            expired.Count.Should().Be(0);
            steps++;
        }

        steps.Should().BeLessThan(40, "a far entry is revisited once per revolution and once per cascade step");
        wheel.Advance(far.DueTick, expired);
        expired.Count.Should().Be(1);
    }

    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(3)]
    [InlineData(4)]
    public void Random_inserts_removes_and_advances_expire_exactly_the_due_entries(int seed)
    {
        var random = new Random(seed);
        var wheel = new TimingWheel();
        var pending = new List<Entry>();
        var expired = new ExpiredTimers();
        long now = random.NextInt64(0, 1L << 40);
        wheel.FastForward(now);

        for (int step = 0; step < 10_000; step++)
        {
            int op = random.Next(10);
            if (op < 5)
            {
                // Log-uniform distances: most short, some across every level, a few beyond the span.
                long distance = 1 + (long)Math.Pow(2, random.NextDouble() * 40);
                Entry entry = At(now + distance);
                wheel.Insert(entry, entry.DueTick);
                pending.Add(entry);
            }
            else if (op < 7 && pending.Count > 0)
            {
                int index = random.Next(pending.Count);
                wheel.Remove(pending[index]);
                pending[index].IsLinked.Should().BeFalse();
                pending.RemoveAt(index);
            }
            else
            {
                now += (long)Math.Pow(2, random.NextDouble() * (random.Next(8) == 0 ? 38 : 12));
                wheel.Advance(now, expired);
                var fired = new HashSet<TimerEntry>();
                for (int i = 0; i < expired.Count; i++)
                {
                    expired[i].DueTick.Should().BeLessThanOrEqualTo(now, "nothing expires early");
                    fired.Add(expired[i]).Should().BeTrue("an entry expires once");
                }

                expired.Clear();
                var due = pending.Where(e => e.DueTick <= now).ToHashSet();
                fired.SetEquals(due).Should().BeTrue($"exactly the due entries expire (step {step}, seed {seed})");
                pending.RemoveAll(due.Contains);
            }

            wheel.Count.Should().Be(pending.Count);
            if (pending.Count > 0)
            {
                wheel.TryGetNextExpiration(out long next).Should().BeTrue();
                next.Should().BeGreaterThan(wheel.Elapsed);
                next.Should().BeLessThanOrEqualTo(pending.Min(e => e.DueTick), "the driver never sleeps past a deadline");
            }
        }
    }
}

public sealed class FastDivisorTests
{
    [Theory]
    [InlineData(1L)]
    [InlineData(3L)]
    [InlineData(100_000L)]
    [InlineData(1_000_000L)]
    [InlineData(999_983L)]
    [InlineData(3_600_000_000_000L)]
    public void Matches_hardware_division_exactly(long divisor)
    {
        var fast = new FastDivisor(divisor);
        var random = new Random((int)(divisor % int.MaxValue));
        var samples = Enumerable.Range(0, 20_000).Select(_ => random.NextInt64(0, long.MaxValue))
            .Concat(Enumerable.Range(0, 1000).Select(i => (long)i))
            .Concat(new[] { divisor - 1, divisor, divisor + 1, (divisor * 7) - 1, divisor * 7, long.MaxValue, long.MaxValue - 1 });
        foreach (long x in samples.Where(x => x >= 0))
        {
            long quotient = fast.DivRem(x, out long remainder);
            quotient.Should().Be(x / divisor, $"{x} / {divisor}");
            remainder.Should().Be(x % divisor);
        }
    }
}
