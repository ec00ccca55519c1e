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
}
