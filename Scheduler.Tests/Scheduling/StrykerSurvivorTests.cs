namespace Scheduler.Tests.Scheduling;

/// <summary>
/// Tests written from a Stryker.NET run over Scheduler/Scheduling/WorkStealingDeque.cs: each one checks a behaviour that a
/// surviving mutant (named in its comment) showed no test checked, and passes on the unmutated code. The run's LifoSlot.cs
/// survivors are killed by tests in <see cref="LifoSlotTests"/>.
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
}
