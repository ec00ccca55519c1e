using System.Runtime.CompilerServices;

namespace Scheduler.Tests.Scheduling;

/// <summary>
/// Tests written from a Stryker.NET run over Scheduler/Scheduling/WorkStealingDeque.cs and LifoSlot.cs: each one checks
/// a behaviour that a surviving mutant (named in its comment) showed no test checked, and passes on the unmutated code.
/// </summary>
public sealed class StrykerSurvivorTests
{
    // Kills: WorkStealingDeque.cs constructor, `capacity < 2` mutated to `capacity <= 2` — the smallest ring the guard's
    // own message allows ("a power of two of at least 2") was refused. Two slots hold two items, and one slot is refused.
    [Fact]
    public void A_deque_of_capacity_two_holds_two_items_and_a_capacity_below_two_is_refused()
    {
        var deque = new WorkStealingDeque(2);
        deque.Capacity.Should().Be(2);
        deque.TryPush(new WorkItem(new object())).Should().BeTrue();
        deque.TryPush(new WorkItem(new object())).Should().BeTrue();
        deque.TryPush(new WorkItem(new object())).Should().BeFalse("the ring is full");

        FluentActions.Invoking(() => new WorkStealingDeque(1)).Should().Throw<ArgumentOutOfRangeException>();
        FluentActions.Invoking(() => new WorkStealingDeque(0)).Should().Throw<ArgumentOutOfRangeException>();
    }

    // Kills: WorkStealingDeque.cs TryPopIfNewest, `tail < head` mutated to `tail <= head` — with a single item queued
    // (the fork-join case: a worker queues one task and then waits on it) the pre-check saw an empty ring and refused to
    // take the task back, so the worker could not inline it.
    [Fact]
    public void TryPopIfNewest_takes_back_the_only_queued_item()
    {
        var deque = new WorkStealingDeque(16);
        object only = new();
        deque.TryPush(new WorkItem(only)).Should().BeTrue();

        deque.TryPopIfNewest(only).Should().BeTrue();
        deque.IsEmpty.Should().BeTrue();
        deque.TryPop(out _).Should().BeFalse("the item left with TryPopIfNewest");
        deque.TrySteal(out _).Should().BeFalse();
    }

    // Kills: WorkStealingDeque.cs CopyTargetsTo, `i < tail` mutated to `i > tail` (nothing listed) and to `i <= tail`
    // (one slot past the tail listed), `i - head < length` mutated to `i - head > length` and `i + head < length`, `i & mask`
    // to `i | mask`, and `i++` to `i--` (a loop that never ends). After a steal from a full ring of four, the slot one past
    // the tail is the stolen item's (the owner clears it only at its next push), so a debugger's view must list exactly
    // the three items still queued, oldest first.
    [Fact]
    public void CopyTargetsTo_lists_exactly_the_queued_targets_oldest_first_and_not_a_stolen_one_still_in_its_slot()
    {
        var deque = new WorkStealingDeque(4);
        object[] targets = [new(), new(), new(), new()];
        foreach (object target in targets)
        {
            deque.TryPush(new WorkItem(target)).Should().BeTrue();
        }

        deque.TrySteal(out WorkItem stolen).Should().BeTrue();
        stolen.Target.Should().BeSameAs(targets[0]);

        var listed = new List<object>();
        deque.CopyTargetsTo(listed);

        listed.Should().Equal(targets[1], targets[2], targets[3]);
    }

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
        slot.Value.Exchange(new WorkItem(held));

        slot.Value.TryTake(other).Should().BeFalse("the slot holds another task");
        slot.Value.PeekTarget.Should().BeSameAs(held, "asking for another task leaves the slot's alone");

        slot.Value.TryTake(held).Should().BeTrue();
        slot.Value.PeekTarget.Should().BeNull("the task left the slot with its owner");
        slot.Value.TryTake(held).Should().BeFalse("it was taken already");
        slot.Value.TryTake(out _).Should().BeFalse();
    }

    // Kills: LifoSlot.cs TryTake(object), `EnterAsOwner()` removed — the worker taking its task back to inline it touched
    // the slot while a rescue was under way (the same guard as TryTake(out), which LifoSlotTests checks, on the other path).
    [Fact]
    public void TryTake_of_a_target_waits_out_a_rescue_under_way()
    {
        var slot = new StrongBox<LifoSlot>();
        object task = new();
        slot.Value.Exchange(new WorkItem(task));
        slot.Value.TryBeginRescue().Should().BeTrue();

        using var ownerTook = new ManualResetEventSlim();
        bool took = false;
        var owner = new Thread(() =>
        {
            took = slot.Value.TryTake(task);
            ownerTook.Set();
        }) { IsBackground = true };
        owner.Start();

        ownerTook.Wait(TimeSpan.FromMilliseconds(200)).Should().BeFalse("the owner must not touch the slot during a rescue");
        slot.Value.EndRescue();
        ownerTook.Wait(SchedulerTestHelpers.Timeout).Should().BeTrue();
        owner.Join();
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
        slot.Value.Exchange(new WorkItem(task));
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
        slot.Value.Exchange(new WorkItem(task));
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

        RunOnOtherThread(() => slot.Value.TryRescue(out _)).Should().BeFalse("the owner is inside the slot");
        slot.Value.PeekTarget.Should().BeSameAs(task);

        leave.Set();
        owner.Join();
        RunOnOtherThread(() => slot.Value.TryRescue(out _)).Should().BeTrue("the owner has left the slot");
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
            slot.Value.Exchange(new WorkItem(task));
            slot.Value.TryBeginRescue().Should().BeTrue();

            using var ownerTook = new ManualResetEventSlim();
            WorkItem taken = default;
            var owner = new Thread(() =>
            {
                slot.Value.TryTake(out taken);
                ownerTook.Set();
            }) { IsBackground = true };
            owner.Start();

            ownerTook.Wait(TimeSpan.FromMilliseconds(10)).Should().BeFalse("the owner must not touch the slot during a rescue");
            slot.Value.EndRescue();
            ownerTook.Wait(TimeSpan.FromSeconds(10)).Should().BeTrue("round {0}: the rescue is over", round);
            owner.Join();
            taken.Target.Should().BeSameAs(task);
        }
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
