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
        bool rescuedWhileInside = SchedulerTestHelpers.RunOnNewThread(() => slot.Value.TryRescue(out _));
        slot.Value.ExitAsOwner();

        rescuedWhileInside.Should().BeFalse("the owner may be reading the item at this very moment");
        slot.Value.PeekTarget.Should().BeSameAs(task);
        SchedulerTestHelpers.RunOnNewThread(() => slot.Value.TryRescue(out _)).Should().BeTrue("the owner has left the slot");
    }

    [Fact]
    public void The_owner_waits_out_a_rescue_under_way()
    {
        var slot = new StrongBox<LifoSlot>();
        object task = new();
        slot.Value.Exchange(Item(task));
        slot.Value.TryBeginRescue().Should().BeTrue();
        slot.Value.TryBeginRescue().Should().BeFalse("one rescuer at a time");

        WorkItem taken = OwnerWaitsOutTheRescue(slot, TimeSpan.FromMilliseconds(200), () => slot.Value.TryTake(out WorkItem item) ? item : default);
        taken.Target.Should().BeSameAs(task);
    }

    // The tests below were written from a Stryker.NET run over LifoSlot.cs (session 37): each kills the surviving
    // mutant named in its comment.

    // Kills: LifoSlot.cs TryTake(object), `!ReferenceEquals(_item.Target, target)` mutated to `ReferenceEquals(...)` (the
    // slot's own task was never taken back), `return false` mutated to `return true` (another task was reported taken
    // and the slot kept it: the worker would then neither inline nor run the caller's task), `if (holds)` negated and its
    // block removed (the task was reported taken but left in the slot, so the worker would run it a second time).
    [Fact]
    public void TryTake_of_a_target_empties_the_slot_only_when_it_holds_that_target()
    {
        var slot = new StrongBox<LifoSlot>();
        object held = new(), other = new();
        slot.Value.TryTake(held).Should().BeFalse("an empty slot holds no target");
        slot.Value.Exchange(Item(held));

        slot.Value.TryTake(other).Should().BeFalse("the slot holds another task");
        slot.Value.PeekTarget.Should().BeSameAs(held, "asking for another task leaves the slot's alone");

        slot.Value.TryTake(held).Should().BeTrue();
        slot.Value.PeekTarget.Should().BeNull("the task left the slot with its owner");
        slot.Value.TryTake(held).Should().BeFalse("it was taken already");
        slot.Value.TryTake(out _).Should().BeFalse();
    }

    // Kills: LifoSlot.cs TryTake(object), `EnterAsOwner()` removed — the worker taking its task back to inline it touched
    // the slot while a rescue was under way (the guard The_owner_waits_out_a_rescue_under_way checks for TryTake(out)).
    [Fact]
    public void TryTake_of_a_target_waits_out_a_rescue_under_way()
    {
        var slot = new StrongBox<LifoSlot>();
        object task = new();
        slot.Value.Exchange(Item(task));
        slot.Value.TryBeginRescue().Should().BeTrue();

        bool took = OwnerWaitsOutTheRescue(slot, TimeSpan.FromMilliseconds(200), () => slot.Value.TryTake(task));
        took.Should().BeTrue("the rescue took nothing, so the task was still the slot's");
        slot.Value.PeekTarget.Should().BeNull();
    }

    // Kills: LifoSlot.cs TryRescue, `return false` (when another rescuer holds the flag) mutated to `return true` — the
    // second rescuer reported a rescue with an empty item, which the watchdog would count and try to queue.
    [Fact]
    public void A_rescue_while_another_is_under_way_takes_nothing_and_reports_nothing()
    {
        var slot = new StrongBox<LifoSlot>();
        object task = new();
        slot.Value.Exchange(Item(task));
        slot.Value.TryBeginRescue().Should().BeTrue();

        slot.Value.TryRescue(out WorkItem rescued).Should().BeFalse("one rescuer at a time");
        rescued.IsEmpty.Should().BeTrue();
        slot.Value.PeekTarget.Should().BeSameAs(task);

        slot.Value.EndRescue();
        slot.Value.TryRescue(out rescued).Should().BeTrue("the first rescue is over");
        rescued.Target.Should().BeSameAs(task);
    }

    // Kills: LifoSlot.cs WaitOutRescue, `Volatile.Write(ref _ownerInside, true)` after the wait removed (or mutated to
    // `false`) — an owner that had waited out a rescue went on into the slot with its flag down, so the next rescue took the
    // item the owner was using. The test thread plays the rescuer; the owner thread stays in the slot until released.
    [Fact]
    public void An_owner_that_waited_out_a_rescue_is_inside_the_slot_for_the_next_rescue()
    {
        var slot = new StrongBox<LifoSlot>();
        object task = new();
        slot.Value.Exchange(Item(task));
        slot.Value.TryBeginRescue().Should().BeTrue();

        using var entered = new ManualResetEventSlim();
        using var leave = new ManualResetEventSlim();
        var owner = new Thread(() =>
        {
            slot.Value.EnterAsOwner();
            entered.Set();
            leave.Wait(SchedulerTestHelpers.Timeout);
            slot.Value.ExitAsOwner();
        }) { IsBackground = true };
        owner.Start();

        entered.Wait(TimeSpan.FromMilliseconds(200)).Should().BeFalse("the owner waits out the rescue under way");
        slot.Value.EndRescue();
        entered.Wait(SchedulerTestHelpers.Timeout).Should().BeTrue();

        SchedulerTestHelpers.RunOnNewThread(() => slot.Value.TryRescue(out _)).Should().BeFalse("the owner is inside the slot");
        slot.Value.PeekTarget.Should().BeSameAs(task);

        leave.Set();
        owner.Join();
        SchedulerTestHelpers.RunOnNewThread(() => slot.Value.TryRescue(out _)).Should().BeTrue("the owner has left the slot");
    }

    // Kills: LifoSlot.cs WaitOutRescue, the inner `Volatile.Read(ref _rescuing) != 0` mutated to `== 0` — the owner then
    // spins while no rescue is under way, and hangs once the rescue ends at a moment it checks the inner condition (about
    // every other time). Each round makes the owner wait out a rescue and then checks that it went on to take its item;
    // twenty rounds leave the mutant about one chance in a million. Rounds in which the owner thread starts late (after the
    // rescue ended) do not wait at all and still pass.
    [Fact]
    public void The_owner_goes_on_after_every_rescue_it_waited_out()
    {
        var slot = new StrongBox<LifoSlot>();
        for (int round = 0; round < 20; round++)
        {
            object task = new();
            slot.Value.Exchange(Item(task));
            slot.Value.TryBeginRescue().Should().BeTrue();

            WorkItem taken = OwnerWaitsOutTheRescue(slot, TimeSpan.FromMilliseconds(10), () => slot.Value.TryTake(out WorkItem item) ? item : default);
            taken.Target.Should().BeSameAs(task, "round {0}: the rescue is over", round);
        }
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

    /// <summary>
    /// Runs <paramref name="take"/> on an owner thread while the rescue the caller began is under way: checks that the
    /// owner is still waiting after <paramref name="stillWaiting"/>, ends the rescue, and returns what the owner took.
    /// </summary>
    private static T OwnerWaitsOutTheRescue<T>(StrongBox<LifoSlot> slot, TimeSpan stillWaiting, Func<T> take)
    {
        using var ownerTook = new ManualResetEventSlim();
        T taken = default!;
        var owner = new Thread(() =>
        {
            taken = take();
            ownerTook.Set();
        }) { IsBackground = true };
        owner.Start();

        ownerTook.Wait(stillWaiting).Should().BeFalse("the owner must not touch the slot during a rescue");
        slot.Value.EndRescue();
        ownerTook.Wait(SchedulerTestHelpers.Timeout).Should().BeTrue("the rescue is over");
        owner.Join();
        return taken;
    }
}
