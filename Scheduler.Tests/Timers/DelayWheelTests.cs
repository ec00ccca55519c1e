using Scheduler.Timers;

namespace Scheduler.Tests.Timers;

/// <summary>The delay wheel over slab handles, driven by hand: links, cascades, O(1) removal anywhere in a list.</summary>
public sealed class DelayWheelTests : IDisposable
{
    private readonly TimerWheel _owner = new(TimeSpan.FromMilliseconds(1), new ManualClock(), startDriver: false);
    private readonly DelaySlab _slab;
    private readonly DelayWheel _wheel;

    public DelayWheelTests()
    {
        _slab = new DelaySlab(_owner);
        _wheel = new DelayWheel(_slab);
    }

    public void Dispose() => _owner.Dispose();

    [Fact]
    public void Advance_cascades_a_far_slot_down_and_expires_it_exactly_at_its_tick()
    {
        int far = At((3L << 24) + (5L << 12) + 7);
        int near = At(9);
        _wheel.Insert(far);
        _wheel.Insert(near);
        var expired = new ExpiredTimers();

        _wheel.Advance(9, expired);
        Handles(expired).Should().Equal(near);
        expired.Clear();

        long due = _slab.Slot(far).DueTick;
        _wheel.Advance(due - 1, expired);
        expired.DelayCount.Should().Be(0);
        _wheel.TryGetNextExpiration(out long next).Should().BeTrue();
        next.Should().Be(due, "after cascading it sits on level 0 in its own slot");

        _wheel.Advance(due, expired);
        Handles(expired).Should().Equal(far);
        _wheel.Count.Should().Be(0);
        _slab.Slot(far).Prev.Should().Be(DelayWheel.NotLinked);
    }

    [Theory]
    [InlineData(0)]
    [InlineData(1)]
    [InlineData(2)]
    public void Removing_the_first_a_middle_or_the_last_slot_of_a_list_keeps_the_others_linked(int victim)
    {
        int[] slots = [At(10), At(10), At(10)];
        foreach (int slot in slots)
        {
            _wheel.Insert(slot);
        }

        _wheel.RemoveIfLinked(slots[victim]);
        _wheel.RemoveIfLinked(slots[victim]); // a second removal is a no-op
        _wheel.Count.Should().Be(2);

        var expired = new ExpiredTimers();
        _wheel.Advance(10, expired);
        Handles(expired).Should().BeEquivalentTo(slots.Where((_, i) => i != victim));
        _wheel.TryGetNextExpiration(out _).Should().BeFalse();
    }

    [Fact]
    public void Removing_every_slot_clears_the_occupancy_so_the_wheel_reports_no_work()
    {
        int a = At(10);
        int b = At(10);
        int c = At(70);
        _wheel.Insert(a);
        _wheel.Insert(b);
        _wheel.Insert(c);

        _wheel.RemoveIfLinked(b);
        _wheel.TryGetNextExpiration(out long tick).Should().BeTrue();
        tick.Should().Be(10);
        _wheel.RemoveIfLinked(a);
        _wheel.TryGetNextExpiration(out tick).Should().BeTrue();
        tick.Should().Be(64, "only the level 1 slot is left");
        _wheel.RemoveIfLinked(c);
        _wheel.TryGetNextExpiration(out _).Should().BeFalse();
        _wheel.Count.Should().Be(0);
    }

    [Fact]
    public void Infinite_waits_are_counted_apart_and_found_again_by_RemoveAll()
    {
        int infinite = _slab.Rent();
        _slab.Slot(infinite).Word |= DelayWord.Infinite;
        int finite = At(5);
        _wheel.InsertInfinite(infinite);
        _wheel.Insert(finite);
        _wheel.InfiniteCount.Should().Be(1);
        _wheel.Count.Should().Be(1);
        _wheel.TryGetNextExpiration(out long tick).Should().BeTrue();
        tick.Should().Be(5, "an infinite wait never makes the wheel due");

        var removed = new ExpiredTimers();
        _wheel.RemoveAll(removed);
        Handles(removed).Should().BeEquivalentTo(new[] { infinite, finite });
        _wheel.InfiniteCount.Should().Be(0);
        _wheel.Count.Should().Be(0);
    }

    [Fact]
    public void Random_inserts_and_removals_expire_exactly_the_survivors_in_tick_order()
    {
        var random = new Random(5);
        var live = new Dictionary<int, long>();
        for (int i = 0; i < 2_000; i++)
        {
            if (live.Count > 0 && random.Next(3) == 0)
            {
                int victim = live.Keys.ElementAt(random.Next(live.Count));
                _wheel.RemoveIfLinked(victim);
                live.Remove(victim);
            }
            else
            {
                long due = 1 + random.Next(1, 300_000);
                int slot = At(due);
                _wheel.Insert(slot);
                live[slot] = due;
            }
        }

        var expired = new ExpiredTimers();
        var fired = new List<(int Handle, long Tick)>();
        for (long tick = 1; _wheel.Count > 0; tick = Math.Min(tick + random.Next(1, 700), 300_000))
        {
            _wheel.Advance(tick, expired);
            for (int i = 0; i < expired.DelayCount; i++)
            {
                int handle = expired.GetDelay(i);
                live[handle].Should().BeLessThanOrEqualTo(tick, "never before its tick");
                fired.Add((handle, tick));
            }

            expired.Clear();
        }

        fired.Select(f => f.Handle).Should().BeEquivalentTo(live.Keys);
        fired.Should().OnlyContain(f => live[f.Handle] > f.Tick - 700, "expired in the Advance that reached its tick");
    }

    private int At(long dueTick)
    {
        int handle = _slab.Rent();
        _slab.Slot(handle).DueTick = dueTick;
        return handle;
    }

    private static List<int> Handles(ExpiredTimers batch) => Enumerable.Range(0, batch.DelayCount).Select(batch.GetDelay).ToList();
}
