using CsCheck;

namespace Scheduler.Tests.Scheduling;

public sealed class WorkStealingDequeTests
{
    [Fact]
    public void Owner_pops_lifo_and_thieves_steal_fifo()
    {
        var deque = new WorkStealingDeque(16);
        for (int i = 0; i < 5; i++)
        {
            deque.TryPush(new WorkItem(Box(i))).Should().BeTrue();
        }

        deque.TrySteal(out WorkItem stolen).Should().BeTrue();
        Unbox(stolen).Should().Be(0);
        deque.TryPop(out WorkItem popped).Should().BeTrue();
        Unbox(popped).Should().Be(4);
        deque.Count.Should().Be(3);
    }

    [Fact]
    public void Push_fails_when_full_and_capacity_must_be_a_power_of_two()
    {
        var deque = new WorkStealingDeque(16);
        for (int i = 0; i < 16; i++)
        {
            deque.TryPush(new WorkItem(Box(i))).Should().BeTrue();
        }

        deque.TryPush(new WorkItem(Box(16))).Should().BeFalse();
        FluentActions.Invoking(() => new WorkStealingDeque(12)).Should().Throw<ArgumentOutOfRangeException>()
            .Where(e => e.ParamName == "capacity" && e.Message.Contains("power of two", StringComparison.Ordinal));
    }

    [Fact]
    public void Steal_half_moves_half_into_the_thief_and_returns_one()
    {
        var victim = new WorkStealingDeque(64);
        var thief = new WorkStealingDeque(64);
        for (int i = 0; i < 10; i++)
        {
            victim.TryPush(new WorkItem(Box(i)));
        }

        victim.TryStealHalf(thief, out WorkItem first, out int moved).Should().BeTrue();
        Unbox(first).Should().Be(0);
        moved.Should().Be(5);
        thief.Count.Should().Be(5);
        victim.Count.Should().Be(4);
        thief.TryPop(out WorkItem newest).Should().BeTrue();
        Unbox(newest).Should().Be(5);
    }

    [Fact]
    public void Take_oldest_batch_claims_from_the_head()
    {
        var deque = new WorkStealingDeque(16);
        for (int i = 0; i < 10; i++)
        {
            deque.TryPush(new WorkItem(Box(i)));
        }

        var batch = new WorkItem[4];
        deque.TakeOldestBatch(batch).Should().Be(4);
        batch.Select(Unbox).Should().Equal(0, 1, 2, 3);
        deque.Count.Should().Be(6);
        deque.TryPop(out WorkItem newest).Should().BeTrue();
        Unbox(newest).Should().Be(9);
    }

    [Fact]
    public void Pop_if_newest_only_removes_the_tail_item()
    {
        var deque = new WorkStealingDeque(16);
        object a = new(), b = new();
        deque.TryPush(new WorkItem(a));
        deque.TryPush(new WorkItem(b));
        deque.TryPopIfNewest(a).Should().BeFalse();
        deque.TryPopIfNewest(b).Should().BeTrue();
        deque.Count.Should().Be(1);
    }

    [Fact]
    public void Steal_half_moves_only_what_fits_in_the_thiefs_ring_and_leaves_the_rest_queued()
    {
        // The thief's ring has room for 3 more: half of the victim's 20 is 10, but only 3 may move, or the pushes that
        // fail would drop stolen items on the floor.
        var victim = new WorkStealingDeque(32);
        var thief = new WorkStealingDeque(16);
        for (int i = 0; i < 20; i++)
        {
            victim.TryPush(new WorkItem(Box(i))).Should().BeTrue();
        }

        for (int i = 100; i < 113; i++)
        {
            thief.TryPush(new WorkItem(Box(i))).Should().BeTrue();
        }

        victim.TryStealHalf(thief, out WorkItem first, out int moved).Should().BeTrue();
        Unbox(first).Should().Be(0);
        moved.Should().Be(3);
        thief.Count.Should().Be(16);
        victim.Count.Should().Be(16, "only what moved left the victim");

        var all = new List<int> { Unbox(first) };
        while (thief.TryPop(out WorkItem item))
        {
            all.Add(Unbox(item));
        }

        while (victim.TryPop(out WorkItem item))
        {
            all.Add(Unbox(item));
        }

        all.Should().BeEquivalentTo(Enumerable.Range(0, 20).Concat(Enumerable.Range(100, 13)), "nothing is lost or taken twice");
    }

    /// <summary>
    /// A stolen item's slot must not keep it alive: a thief cannot clear the slot (the owner may be refilling it), so
    /// the owner clears it at its next push, or when it finds the ring empty. Found in a heap dump of ping_pong, where one
    /// stale slot kept a whole chain of completed promises reachable.
    /// </summary>
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void Stolen_items_are_released_at_the_owners_next_push_or_empty_pop(bool ringEmptied)
    {
        var deque = new WorkStealingDeque(16);
        var thief = new WorkStealingDeque(16);
        WeakReference[] stolen = PushAndSteal(deque, thief, ringEmptied);

        if (ringEmptied)
        {
            deque.TryPop(out _).Should().BeFalse();
        }
        else
        {
            deque.TryPush(new WorkItem(Box(100))).Should().BeTrue();
        }

        Collected.Await(stolen);
        stolen.Should().OnlyContain(w => !w.IsAlive, "the owner released the slots of items taken by thieves");
        deque.Count.Should().Be(ringEmptied ? 0 : 4, "releasing stolen slots never touches queued items");
    }

    /// <summary>Owner pushes/pops/spills while two thieves steal (singly and in batches): every item is taken exactly once.</summary>
    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(3)]
    [InlineData(4)]
    public void Stress_every_item_is_taken_exactly_once(int seed)
    {
        const int Items = 200_000;
        var deque = new WorkStealingDeque(64);
        var seen = new int[Items];
        var boxes = new object[Items];
        for (int i = 0; i < Items; i++)
        {
            boxes[i] = i;
        }

        int ownerDone = 0;
        var thieves = new Thread[2];
        for (int t = 0; t < thieves.Length; t++)
        {
            bool batch = t == 1;
            thieves[t] = new Thread(() =>
            {
                var own = new WorkStealingDeque(256);
                while (Volatile.Read(ref ownerDone) == 0 || !deque.IsEmpty)
                {
                    bool got = batch ? deque.TryStealHalf(own, out WorkItem item, out _) : deque.TrySteal(out item);
                    if (got)
                    {
                        Interlocked.Increment(ref seen[(int)item.Target!]);
                    }

                    while (own.TryPop(out WorkItem local))
                    {
                        Interlocked.Increment(ref seen[(int)local.Target!]);
                    }
                }
            });
            thieves[t].Start();
        }

        var random = new Random(seed);
        int next = 0;
        while (next < Items)
        {
            int burst = random.Next(1, 8);
            for (int i = 0; i < burst && next < Items; i++)
            {
                if (deque.TryPush(new WorkItem(boxes[next])))
                {
                    next++;
                }
            }

            if (random.Next(40) == 0)
            {
                // Overflow path: the owner claims the oldest half in one CAS while thieves race for the head.
                var batch = new WorkItem[deque.Capacity / 2];
                int taken = deque.TakeOldestBatch(batch);
                for (int i = 0; i < taken; i++)
                {
                    Interlocked.Increment(ref seen[(int)batch[i].Target!]);
                }
            }

            int pops = random.Next(0, 6);
            for (int i = 0; i < pops && deque.TryPop(out WorkItem item); i++)
            {
                Interlocked.Increment(ref seen[(int)item.Target!]);
            }
        }

        while (deque.TryPop(out WorkItem rest))
        {
            Interlocked.Increment(ref seen[(int)rest.Target!]);
        }

        Volatile.Write(ref ownerDone, 1);
        foreach (Thread thief in thieves)
        {
            thief.Join();
        }

        seen.Should().OnlyContain(count => count == 1);
    }

    /// <summary>
    /// Linearizability against a sequential model: CsCheck generates small concurrent histories (owner
    /// pushes/pops racing two thieves); the observed results must match some interleaving of the three
    /// threads' operations applied to a plain double-ended list. Shrinks to a minimal failing history.
    /// </summary>
    [Fact]
    public void Concurrent_histories_are_linearizable_against_a_sequential_model()
    {
        Gen<Scenario> scenarios =
            from initial in Gen.Int[0, 3]
            from owner in Gen.Int[0, 2].Array[1, 4]
            from thiefA in Gen.Int[1, 2]
            from thiefB in Gen.Int[1, 2]
            select new Scenario(initial, owner, new int[thiefA], new int[thiefB]);

        Check.Sample(scenarios, scenario =>
        {
            for (int repeat = 0; repeat < 3; repeat++)
            {
                History history = Run(scenario);
                if (!IsLinearizable(scenario, history))
                {
                    throw new InvalidOperationException($"Not linearizable: {scenario} gave {history}");
                }
            }
        }, iter: 250, threads: 1);
    }

    private sealed record Scenario(int Initial, int[] Owner, int[] ThiefA, int[] ThiefB)
    {
        // Owner op: 0 = pop, else push. Thief op: 0 = steal one (a batch steal is a sequence of these).
        public override string ToString() =>
            $"initial={Initial} owner=[{string.Join(',', Owner.Select(o => o == 0 ? "pop" : "push"))}] a=[{string.Join(',', ThiefA)}] b=[{string.Join(',', ThiefB)}]";
    }

    // Results: owner pop → value or -1, push → pushed value; steal → value or -1 (steal-half → all values taken, in order).
    private sealed record History(List<int[]> Owner, List<int[]> ThiefA, List<int[]> ThiefB)
    {
        public override string ToString() =>
            $"owner={Format(Owner)} a={Format(ThiefA)} b={Format(ThiefB)}";

        private static string Format(List<int[]> results) => string.Join(";", results.Select(r => "[" + string.Join(',', r) + "]"));
    }

    private static History Run(Scenario scenario)
    {
        var deque = new WorkStealingDeque(16);
        int value = 0;
        for (int i = 0; i < scenario.Initial; i++)
        {
            deque.TryPush(new WorkItem(Box(value++)));
        }

        int go = 0;
        var ownerResults = new List<int[]>();
        var aResults = new List<int[]>();
        var bResults = new List<int[]>();

        Thread Thief(int[] ops, List<int[]> results) => new(() =>
        {
            var own = new WorkStealingDeque(16);
            while (Volatile.Read(ref go) == 0)
            {
                Thread.SpinWait(1);
            }

            foreach (int op in ops)
            {
                if (op == 0)
                {
                    results.Add(deque.TrySteal(out WorkItem item) ? [Unbox(item)] : [-1]);
                }
                else if (deque.TryStealHalf(own, out WorkItem first, out int moved))
                {
                    var taken = new List<int> { Unbox(first) };
                    var rest = new List<int>();
                    while (own.TryPop(out WorkItem extra))
                    {
                        rest.Add(Unbox(extra));
                    }

                    rest.Reverse(); // popped LIFO; the model takes them FIFO
                    taken.AddRange(rest);
                    results.Add([.. taken]);
                    _ = moved;
                }
                else
                {
                    results.Add([-1]);
                }
            }
        });

        Thread a = Thief(scenario.ThiefA, aResults), b = Thief(scenario.ThiefB, bResults);
        a.Start();
        b.Start();
        Volatile.Write(ref go, 1);
        foreach (int op in scenario.Owner)
        {
            if (op == 0)
            {
                ownerResults.Add(deque.TryPop(out WorkItem item) ? [Unbox(item)] : [-1]);
            }
            else
            {
                int pushed = value++;
                deque.TryPush(new WorkItem(Box(pushed)));
                ownerResults.Add([pushed]);
            }
        }

        a.Join();
        b.Join();
        return new History(ownerResults, aResults, bResults);
    }

    private static bool IsLinearizable(Scenario scenario, History history)
    {
        var model = new LinkedList<int>();
        for (int i = 0; i < scenario.Initial; i++)
        {
            model.AddLast(i);
        }

        return Search(model, scenario, history, 0, 0, 0);
    }

    private static bool Search(LinkedList<int> model, Scenario s, History h, int o, int a, int b)
    {
        if (o == s.Owner.Length && a == s.ThiefA.Length && b == s.ThiefB.Length)
        {
            return true;
        }

        if (o < s.Owner.Length)
        {
            var copy = new LinkedList<int>(model);
            if (ApplyOwner(copy, s.Owner[o], h.Owner[o]) && Search(copy, s, h, o + 1, a, b))
            {
                return true;
            }
        }

        if (a < s.ThiefA.Length)
        {
            var copy = new LinkedList<int>(model);
            if (ApplyThief(copy, s.ThiefA[a], h.ThiefA[a]) && Search(copy, s, h, o, a + 1, b))
            {
                return true;
            }
        }

        if (b < s.ThiefB.Length)
        {
            var copy = new LinkedList<int>(model);
            if (ApplyThief(copy, s.ThiefB[b], h.ThiefB[b]) && Search(copy, s, h, o, a, b + 1))
            {
                return true;
            }
        }

        return false;
    }

    private static bool ApplyOwner(LinkedList<int> model, int op, int[] result)
    {
        if (op != 0)
        {
            model.AddLast(result[0]);
            return true;
        }

        if (model.Count == 0)
        {
            return result[0] == -1;
        }

        int last = model.Last!.Value;
        model.RemoveLast();
        return result[0] == last;
    }

    private static bool ApplyThief(LinkedList<int> model, int op, int[] result)
    {
        if (model.Count == 0)
        {
            return result[0] == -1;
        }

        if (result[0] == -1)
        {
            return false; // a steal may not fail while items are there (it retries on contention)
        }

        // A batch steal takes a prefix of the head: ceil(n/2) items in one atomic step.
        int expected = op == 0 ? 1 : model.Count - (model.Count >> 1);
        if (result.Length != expected)
        {
            return false;
        }

        foreach (int value in result)
        {
            if (model.First!.Value != value)
            {
                return false;
            }

            model.RemoveFirst();
        }

        return true;
    }

    // Not inlined, so no reference to the stolen items outlives this frame in a register or stack slot of the test.
    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.NoInlining)]
    private static WeakReference[] PushAndSteal(WorkStealingDeque deque, WorkStealingDeque thief, bool stealAll)
    {
        var pushed = new List<object>();
        for (int i = 0; i < 8; i++)
        {
            object item = new object();
            pushed.Add(item);
            deque.TryPush(new WorkItem(item)).Should().BeTrue();
        }

        // One single steal, then one batch steal (the first item plus half the rest, into the thief).
        deque.TrySteal(out _).Should().BeTrue();
        deque.TryStealHalf(thief, out _, out int moved).Should().BeTrue();
        while (thief.TryPop(out _))
        {
        }

        int stolen = 1 + 1 + moved;
        if (stealAll)
        {
            while (deque.TrySteal(out _))
            {
                stolen++;
            }
        }

        stolen.Should().Be(stealAll ? 8 : 5);
        return pushed.Take(stolen).Select(o => new WeakReference(o)).ToArray();
    }

    private static object Box(int value) => (object)value;

    private static int Unbox(WorkItem item) => (int)item.Target!;
}
