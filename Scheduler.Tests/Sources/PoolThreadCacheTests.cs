using Scheduler.Sources;

namespace Scheduler.Tests.Sources;

/// <summary>Takes every thread-cache id of the process for a while, so nothing that expects a thread cache may run beside it.</summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class PoolThreadIdGroup
{
    public const string Name = "Pool thread-cache ids";
}

[Collection(PoolThreadIdGroup.Name)]
public sealed class PoolThreadCacheTests
{
    private static readonly TimeSpan s_bound = TimeSpan.FromSeconds(60);

    [Fact]
    public void A_thread_that_found_every_id_taken_gets_a_cache_once_an_id_is_given_back()
    {
        // Hold ids with parked threads until one finds none left (other live threads of the process hold some too).
        var holders = new List<(Thread Thread, ManualResetEventSlim Leave)>();
        var pool = new ValueTaskSourcePool<object>(static () => new object(), capacity: 16);
        using var victimMayContinue = new ManualResetEventSlim();
        try
        {
            while (true)
            {
                holders.Count.Should().BeLessThanOrEqualTo(PoolThreadCache.MaxThreads + 1, "every id is taken after at most that many holders");
                int offset = RunHolder(holders);
                if (offset < 0)
                {
                    break;
                }
            }

            object first = new(), second = new();
            int countAfterFirst = -1, countAfterSecond = -1, offsetAtTheEnd = -1;
            Exception? failure = null;
            using var firstReturned = new ManualResetEventSlim();
            var victim = new Thread(() =>
            {
                try
                {
                    pool.Return(first);
                    countAfterFirst = pool.Count;
                    firstReturned.Set();
                    victimMayContinue.Wait(s_bound).Should().BeTrue();
                    pool.Return(second);
                    countAfterSecond = pool.Count;
                    offsetAtTheEnd = PoolThreadCache.Offset;
                }
                catch (Exception e)
                {
                    failure = e;
                    firstReturned.Set();
                }
            }, maxStackSize: 256 * 1024);
            victim.Start();
            firstReturned.Wait(s_bound).Should().BeTrue("the victim's first return finishes");
            failure.Should().BeNull();
            countAfterFirst.Should().Be(1, "with every id taken the first return goes to the shared storage (precondition)");

            // A few holders end and their ids come back (by their finalizers, once their thread-statics are collected).
            int releasedBefore = PoolThreadCache.ReleasedIdsForTests;
            foreach ((Thread thread, ManualResetEventSlim leave) in holders.GetRange(0, 8))
            {
                leave.Set();
                thread.Join(s_bound).Should().BeTrue();
            }

            var clock = System.Diagnostics.Stopwatch.StartNew();
            while (PoolThreadCache.ReleasedIdsForTests - releasedBefore < 8 && clock.Elapsed < s_bound)
            {
                GC.Collect();
                GC.WaitForPendingFinalizers();
            }

            (PoolThreadCache.ReleasedIdsForTests - releasedBefore).Should().BeGreaterThanOrEqualTo(8, "the ended holders' ids were given back");

            victimMayContinue.Set();
            victim.Join(s_bound).Should().BeTrue("the victim finishes");
            failure.Should().BeNull();
            offsetAtTheEnd.Should().BeGreaterThan(0, "the thread got an id once ids were free again");
            countAfterSecond.Should().Be(1, "the second return stays in the thread's new cache, not the shared storage");
        }
        finally
        {
            victimMayContinue.Set();
            foreach ((Thread thread, ManualResetEventSlim leave) in holders)
            {
                leave.Set();
                thread.Join(s_bound);
                leave.Dispose();
            }
        }
    }

    [Fact]
    public void A_thread_whose_offset_is_the_length_of_a_pools_array_rents_and_returns_through_a_grown_array()
    {
        // Offsets and array lengths are both multiples of the stride, so a thread can sit exactly at the array's end.
        // Session 53's Stryker run of ValueTaskSourcePool.cs: the bounds checks of Rent and Return written as <=
        // survived; at this offset each read one past the array and threw IndexOutOfRangeException. Holder threads
        // cannot be relied on to reach that offset: the arrays cover every id once the process has used the highest
        // (the test above takes them all), so the array is set to end at this thread's offset.
        int offset = PoolThreadCache.AssignOffset();
        if (offset < 0)
        {
            // Ids of ended threads come back by their finalizers.
            GC.Collect();
            GC.WaitForPendingFinalizers();
            offset = PoolThreadCache.AssignOffset();
        }

        offset.Should().BeGreaterThan(0, "the test thread has an id (precondition)");
        var pool = new ValueTaskSourcePool<object>(static () => new object(), capacity: 16);
        pool.SetThreadCacheLengthForTests(offset);

        object rented = pool.Rent();
        pool.Return(rented).Should().BeTrue("a thread beyond the array grows it and keeps the object in its new slot");
        pool.ThreadCacheLengthForTests.Should().BeGreaterThan(offset);
        pool.Rent().Should().BeSameAs(rented, "the thread's next rent finds it there");
        pool.Count.Should().Be(0, "it never reached the shared storage");
    }

    /// <summary>Starts a thread that takes an id and parks until told to leave; returns its offset (-1: none was left).</summary>
    private static int RunHolder(List<(Thread Thread, ManualResetEventSlim Leave)> holders)
    {
        var leave = new ManualResetEventSlim();
        int offset = int.MinValue;
        var assigned = new ManualResetEventSlim(); // not disposed: the holder may still be inside Set when Wait returns
        var thread = new Thread(() =>
        {
            offset = PoolThreadCache.AssignOffset();
            assigned.Set();
            leave.Wait();
        }, maxStackSize: 256 * 1024) { IsBackground = true };
        thread.Start();
        holders.Add((thread, leave));
        assigned.Wait(s_bound).Should().BeTrue("a holder thread starts");
        return offset;
    }
}
