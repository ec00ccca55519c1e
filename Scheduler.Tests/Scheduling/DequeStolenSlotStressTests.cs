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
        using var thief = new Thief(deque);
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
            SpinWait.SpinUntil(() => thief.Stolen == lost);
            deque.ReferencingSlotCountForTests().Should().Be(0,
                "the item is the thief's now (round {0}, pop lost {1} times)", rounds, lost);
        }

        lost.Should().BeGreaterThan(0, "the thief won some of the races");
    }

    /// <summary>
    /// The overflow's batch take copies the oldest items out and then claims them with one compare-and-swap. When a thief
    /// moves the head first, the take tries again with what is left; its copies from the lost attempt used to stay in
    /// the batch past its end (or fill an empty batch that went back to the pool), where nothing cleared them. A heap
    /// dump of a failing <see cref="IdleRetentionTests"/> run found a finished task held that way by a spare batch.
    /// </summary>
    [Fact]
    public void A_batch_take_that_loses_to_a_thief_leaves_no_copy_past_what_it_took()
    {
        var deque = new WorkStealingDeque(64);
        var destination = new WorkItem[32];
        var item = new object();
        using var thief = new Thief(deque);
        var clock = Stopwatch.StartNew();
        long rounds = 0;
        long shortTakes = 0;
        var random = new Random(23);
        while (clock.Elapsed < TimeSpan.FromSeconds(2))
        {
            rounds++;
            int pushed = random.Next(1, 65);
            for (int i = 0; i < pushed; i++)
            {
                deque.TryPush(new WorkItem(item)).Should().BeTrue();
            }

            Thread.SpinWait(random.Next(0, 64));
            int taken = deque.TakeOldestBatch(destination);
            shortTakes += taken < Math.Min(pushed, destination.Length) ? 1 : 0;
            destination.Skip(taken).Count(static slot => !slot.IsEmpty).Should().Be(0,
                "only the {0} items taken are the batch's (round {1}, {2} pushed)", taken, rounds, pushed);

            Array.Clear(destination);
            while (deque.TryPop(out _))
            {
            }
        }

        shortTakes.Should().BeGreaterThan(0, "the thief took items from under some batch takes");
    }

    /// <summary>A thread that steals from the deque, as fast as it can, until disposed; counts what it took.</summary>
    private sealed class Thief : IDisposable
    {
        private readonly Thread _thread;
        private int _stop;
        private long _stolen;

        public Thief(WorkStealingDeque deque)
        {
            _thread = new Thread(() =>
            {
                while (Volatile.Read(ref _stop) == 0)
                {
                    if (deque.TrySteal(out _))
                    {
                        Interlocked.Increment(ref _stolen);
                    }
                }
            });
            _thread.Start();
        }

        public long Stolen => Interlocked.Read(ref _stolen);

        public void Dispose()
        {
            Volatile.Write(ref _stop, 1);
            _thread.Join();
        }
    }
}
