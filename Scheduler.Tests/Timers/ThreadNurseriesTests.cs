using Scheduler.Timers;

namespace Scheduler.Tests.Timers;

/// <summary>
/// The process-wide table of nurseries by managed thread id (<see cref="ThreadNurseries"/>) at and beyond its end. The
/// table starts with 64 slots, and most test threads have smaller ids, so the mutation run over it (session 51) found
/// its growth untested: a table that never grew, or grew to <see cref="Array.MaxLength"/>, passed every timer test.
/// </summary>
/// <remarks>
/// High ids come from unstarted <see cref="Thread"/> objects: the runtime gives a thread its id when the object is
/// created and hands out the smallest free one, so holding enough of them reaches any id. No OS thread is started.
/// </remarks>
public sealed class ThreadNurseriesTests
{
    [Fact]
    public void A_thread_whose_id_is_at_or_far_beyond_the_end_of_the_table_gets_its_nursery_and_can_forget_it()
    {
        using var wheel = new TimerWheel(TimeSpan.FromMilliseconds(1), new ManualClock(), startDriver: false);
        var held = new List<Thread>();
        try
        {
            // The id the table's length names (the first with no slot), then one past twice that: growth must cover the
            // id itself, not just double.
            int length = ThreadNurseries.LengthForTests;
            Thread atEnd = ThreadWithIdAtLeast(length, held);
            AssertRegistersAndForgets(wheel, atEnd);

            Thread farBeyond = ThreadWithIdAtLeast((2 * ThreadNurseries.LengthForTests) + 1, held);
            AssertRegistersAndForgets(wheel, farBeyond);
            ThreadNurseries.LengthForTests.Should().BeGreaterThan(farBeyond.ManagedThreadId)
                .And.BeLessThanOrEqualTo(2 * (farBeyond.ManagedThreadId + 1), "the table grows to what the ids need, not to Array.MaxLength");
        }
        finally
        {
            held.ForEach(t => ThreadNurseries.Set(t, null));
        }
    }

    [Fact]
    public void Forgetting_or_clearing_the_nursery_of_a_thread_beyond_the_table_changes_nothing()
    {
        using var wheel = new TimerWheel(TimeSpan.FromMilliseconds(1), new ManualClock(), startDriver: false);
        var held = new List<Thread>();
        Thread beyond = ThreadWithIdAtLeast(ThreadNurseries.LengthForTests, held); // the id just past the end, most likely
        int length = ThreadNurseries.LengthForTests;
        if (beyond.ManagedThreadId < length)
        {
            return; // another thread grew the table meanwhile: the id has a slot after all (rare; nothing to check)
        }

        ThreadNurseries.Forget(new TimerNursery(wheel, beyond)); // a nursery the table never held: no slot to clear
        ThreadNurseries.Set(beyond, null);

        ThreadNurseries.LengthForTests.Should().Be(length, "clearing a slot that does not exist needs no room");
        ThreadNurseries.Of(beyond).Should().BeNull();
        GC.KeepAlive(held);
    }

    private static void AssertRegistersAndForgets(TimerWheel wheel, Thread thread)
    {
        var nursery = new TimerNursery(wheel, thread);
        ThreadNurseries.Of(thread).Should().BeNull($"thread {thread.ManagedThreadId} registered none yet");

        ThreadNurseries.Set(thread, nursery);
        ThreadNurseries.Of(thread).Should().BeSameAs(nursery, $"thread {thread.ManagedThreadId}'s slot holds its nursery");

        ThreadNurseries.Forget(nursery);
        ThreadNurseries.Of(thread).Should().BeNull("a forgotten nursery's slot is cleared");
    }

    /// <summary>Creates (and holds, in <paramref name="held"/>) unstarted threads until one has an id of at least <paramref name="id"/>.</summary>
    private static Thread ThreadWithIdAtLeast(int id, List<Thread> held)
    {
        while (true)
        {
            var thread = new Thread(static () => { });
            held.Add(thread);
            if (thread.ManagedThreadId >= id)
            {
                return thread;
            }
        }
    }
}
