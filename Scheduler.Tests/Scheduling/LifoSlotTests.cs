using System.Runtime.CompilerServices;

namespace Scheduler.Tests.Scheduling;

/// <summary>
/// The LIFO slot's rescue protocol (an asymmetric Dekker: plain stores on the owner's side, a process-wide barrier on
/// the rescuer's): a rescue never takes an item the owner is taking, and the owner never touches the slot while a rescue
/// is under way. Deterministic cases first, then the two sides racing as fast as they can.
/// </summary>
public sealed class LifoSlotTests
{
    private static WorkItem Item(object target) => new(target);

    [Fact]
    public void A_rescue_takes_the_item_when_the_owner_is_outside_the_slot()
    {
        var slot = new StrongBox<LifoSlot>();
        object task = new();
        slot.Value.Exchange(Item(task)).IsEmpty.Should().BeTrue();

        slot.Value.TryRescue(out WorkItem rescued).Should().BeTrue();
        rescued.Target.Should().BeSameAs(task);
        slot.Value.PeekTarget.Should().BeNull("the item left the slot with the rescuer");
        slot.Value.TryTake(out _).Should().BeFalse();
        slot.Value.TryRescue(out _).Should().BeFalse("an empty slot has nothing to rescue");
    }

    [Fact]
    public void A_rescue_backs_off_while_the_owner_is_inside_the_slot()
    {
        var slot = new StrongBox<LifoSlot>();
        object task = new();
        slot.Value.Exchange(Item(task));

        slot.Value.EnterAsOwner();
        bool rescuedWhileInside = RunOnOtherThread(() => slot.Value.TryRescue(out _));
        slot.Value.ExitAsOwner();

        rescuedWhileInside.Should().BeFalse("the owner may be reading the item at this very moment");
        slot.Value.PeekTarget.Should().BeSameAs(task);
        RunOnOtherThread(() => slot.Value.TryRescue(out _)).Should().BeTrue("the owner has left the slot");
    }

    [Fact]
    public void The_owner_waits_out_a_rescue_under_way()
    {
        var slot = new StrongBox<LifoSlot>();
        object task = new();
        slot.Value.Exchange(Item(task));
        slot.Value.TryBeginRescue().Should().BeTrue();
        slot.Value.TryBeginRescue().Should().BeFalse("one rescuer at a time");

        using var ownerTook = new ManualResetEventSlim();
        WorkItem taken = default;
        var owner = new Thread(() =>
        {
            slot.Value.TryTake(out taken);
            ownerTook.Set();
        }) { IsBackground = true };
        owner.Start();

        ownerTook.Wait(TimeSpan.FromMilliseconds(200)).Should().BeFalse("the owner must not touch the slot during a rescue");
        slot.Value.EndRescue();
        ownerTook.Wait(SchedulerTestHelpers.Timeout).Should().BeTrue();
        owner.Join();
        taken.Target.Should().BeSameAs(task);
    }

    /// <summary>
    /// An owner thread cycles unique items through the slot (put, sometimes put again to displace, take) while a rescuer
    /// hammers it; every item must come out exactly once, through the owner or the rescuer.
    /// </summary>
    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(3)]
    public void Owner_and_rescuer_racing_never_both_take_an_item_nor_lose_one(int seed)
    {
        const int Items = 200_000;
        var slot = new StrongBox<LifoSlot>();
        var items = new object[Items];
        for (int i = 0; i < Items; i++)
        {
            items[i] = new StrongBox<int>(i);
        }

        var taken = new int[Items];
        int rescues = 0;
        int ownerDone = 0;

        void Record(in WorkItem item)
        {
            if (!item.IsEmpty)
            {
                Interlocked.Increment(ref taken[((StrongBox<int>)item.Target!).Value]);
            }
        }

        var rescuer = new Thread(() =>
        {
            var random = new Random(seed);
            while (Volatile.Read(ref ownerDone) == 0)
            {
                if (slot.Value.TryRescue(out WorkItem item))
                {
                    rescues++;
                    Record(item);
                }

                // A pause of the order of the barrier itself (microseconds): a rescuer that re-raised its flag at once
                // would hold it nearly all the time, and the owner would wait out one rescue after another (the
                // watchdog, the real rescuer, tries a worker once per tick).
                Thread.SpinWait(random.Next(20, 100));
            }
        }) { IsBackground = true };
        rescuer.Start();

        var owner = new Thread(() =>
        {
            var random = new Random(~seed);
            for (int i = 0; i < Items; i++)
            {
                Record(slot.Value.Exchange(Item(items[i]))); // a displaced item counts as taken by the owner
                Thread.SpinWait(random.Next(0, 16)); // "running a task": the item waits in the slot, the owner outside it
                if (random.Next(3) != 0 && slot.Value.TryTake(out WorkItem mine))
                {
                    Record(mine);
                }
            }

            Volatile.Write(ref ownerDone, 1);
        }) { IsBackground = true };
        owner.Start();

        owner.Join();
        rescuer.Join();
        Record(slot.Value.Exchange(default));

        taken.Should().OnlyContain(count => count == 1, "every item leaves the slot exactly once");
        rescues.Should().BeGreaterThan(0, "the rescuer must have won some races for this test to mean anything");
    }

    private static T RunOnOtherThread<T>(Func<T> action)
    {
        T result = default!;
        var thread = new Thread(() => result = action()) { IsBackground = true };
        thread.Start();
        thread.Join();
        return result;
    }
}
