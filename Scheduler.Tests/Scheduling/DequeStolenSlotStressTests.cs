using System.Diagnostics;

namespace Scheduler.Tests.Scheduling;

/// <summary>
/// An owner's pop that loses its deque's last item to a thief must still clear that item's slot. A thief cannot clear
/// it (the owner may be refilling it), and the owner used to clear stolen slots only at its next push or at a pop that
/// found the ring empty at its first look; a pop that lost the race later (after its fence, or at the compare-and-swap
/// on the last item) left the slot pointing at the stolen item. A worker whose spinning is suppressed parks right after
/// such a pop, so the item, and everything it reaches, stayed alive for as long as the worker slept. Found by a CI run
/// in which one of 24 faulted tasks never reached <see cref="TaskScheduler.UnobservedTaskException"/> (see
/// AdversarialCrashTests).
/// </summary>
[Collection(SerialResourceGroup.Name)]
public sealed class DequeStolenSlotStressTests
{
    [Fact]
    public void A_pop_that_loses_the_last_item_to_a_thief_leaves_no_slot_pointing_at_it()
    {
        var deque = new WorkStealingDeque(16);
        var item = new object();
        int stop = 0;
        long stolen = 0;
        var thief = new Thread(() =>
        {
            while (Volatile.Read(ref stop) == 0)
            {
                if (deque.TrySteal(out _))
                {
                    Interlocked.Increment(ref stolen);
                }
            }
        });
        thief.Start();
        try
        {
            var clock = Stopwatch.StartNew();
            long rounds = 0;
            long lost = 0;
            var random = new Random(17);
            while (clock.Elapsed < TimeSpan.FromSeconds(2))
            {
                rounds++;
                deque.TryPush(new WorkItem(item)).Should().BeTrue();

                // Vary the owner's delay so that the thief's steal lands at every point of the pop.
                Thread.SpinWait(random.Next(0, 64));
                if (deque.TryPop(out _))
                {
                    continue;
                }

                lost++;
                SpinWait.SpinUntil(() => Interlocked.Read(ref stolen) == lost);
                deque.ReferencingSlotCountForTests().Should().Be(0,
                    "the item is the thief's now (round {0}, pop lost {1} times)", rounds, lost);
            }

            lost.Should().BeGreaterThan(0, "the thief won some of the races");
        }
        finally
        {
            Volatile.Write(ref stop, 1);
            thief.Join();
        }
    }
}
