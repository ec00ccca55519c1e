using System.Runtime.CompilerServices;
using Scheduler.Sources;

namespace Scheduler.Tests.Sources;

public sealed class ValueTaskSourcePoolTests
{
    [Fact]
    public void Rent_creates_when_empty_and_reuses_what_was_returned()
    {
        int created = 0;
        var pool = new ValueTaskSourcePool<object>(() =>
        {
            created++;
            return new object();
        }, capacity: 16);

        object first = pool.Rent();
        created.Should().Be(1);
        pool.Return(first).Should().BeTrue();
        pool.Count.Should().Be(0, "the first object returned on a thread stays in that thread's cache");
        pool.Rent().Should().BeSameAs(first);
        pool.Return(first).Should().BeTrue("the thread's own slot, empty again, keeps it (session 53: a mutant that kept it and said false survived)");

        // Same thread, so almost always the same processor's slots; the overflow queue covers a migration.
        var seen = new HashSet<object>(ReferenceEqualityComparer.Instance);
        for (int i = 0; i < 4; i++)
        {
            seen.Add(pool.Rent());
        }

        seen.Should().Contain(first);
        created.Should().Be(4);
    }

    [Fact]
    public void Return_drops_objects_beyond_the_capacity()
    {
        var pool = new ValueTaskSourcePool<object>(static () => new object(), capacity: 10);
        var items = Enumerable.Range(0, 100).Select(_ => pool.Rent()).ToList();
        int kept = items.Count(pool.Return);

        kept.Should().Be(11, "the capacity bounds the shared storage, and this thread caches one more");
        pool.Count.Should().Be(10);
        pool.Capacity.Should().Be(10);
    }

    [Fact]
    public void Objects_rented_back_out_of_the_shared_storage_make_room_for_as_many_returns_again()
    {
        // Every round fills the pool to its capacity, then rents everything back out: the shared storage's bookkeeping
        // (the overflow queue's count) must follow the rents too, or each round keeps fewer objects than the last.
        var pool = new ValueTaskSourcePool<object>(static () => new object(), capacity: 10);
        for (int round = 0; round < 3; round++)
        {
            var items = Enumerable.Range(0, 20).Select(_ => pool.Rent()).ToList();
            pool.Count.Should().Be(0, "round {0} rented every retained object back out", round);
            items.Count(pool.Return).Should().Be(11, "round {0}: the capacity, plus this thread's cached one", round);
            pool.Count.Should().Be(10);
        }
    }

    [Fact]
    public void Zero_capacity_retains_nothing()
    {
        var pool = new ValueTaskSourcePool<object>(static () => new object(), capacity: 0);
        pool.Return(pool.Rent()).Should().BeFalse();
        pool.Count.Should().Be(0);
    }

    [Fact]
    public void Thread_cache_serves_only_its_own_pool()
    {
        var a = new ValueTaskSourcePool<object>(static () => new object(), capacity: 4);
        var b = new ValueTaskSourcePool<object>(static () => new object(), capacity: 4);
        object fromA = a.Rent();
        a.Return(fromA);

        b.Rent().Should().NotBeSameAs(fromA, "pool b must never hand out an object that belongs to pool a");
        a.Rent().Should().BeSameAs(fromA);
    }

    [Fact]
    public void Bad_arguments_are_rejected()
    {
        Action nullFactory = () => _ = new ValueTaskSourcePool<object>(null!, 4);
        Action negative = () => _ = new ValueTaskSourcePool<object>(static () => new object(), -1);
        Action nullFromFactory = () => new ValueTaskSourcePool<object>(static () => null!, 4).Rent();
        Action nullReturn = () => new ValueTaskSourcePool<object>(static () => new object(), 4).Return(null!);

        nullFactory.Should().Throw<ArgumentNullException>();
        negative.Should().Throw<ArgumentOutOfRangeException>();
        nullFromFactory.Should().Throw<InvalidOperationException>();
        nullReturn.Should().Throw<ArgumentNullException>();
    }

    [Fact]
    public void Concurrent_rent_and_return_never_hands_an_object_to_two_owners()
    {
        const int Capacity = 64;
        var pool = new ValueTaskSourcePool<Owned>(static () => new Owned(), Capacity);
        int violations = 0;
        var threads = new Thread[8];
        for (int t = 0; t < threads.Length; t++)
        {
            threads[t] = new Thread(() =>
            {
                var held = new List<Owned>();
                var random = new Random(Environment.CurrentManagedThreadId);
                for (int i = 0; i < 100_000; i++)
                {
                    if (held.Count < 8 && (held.Count == 0 || random.Next(2) == 0))
                    {
                        Owned item = pool.Rent();
                        if (Interlocked.Exchange(ref item.InUse, 1) != 0)
                        {
                            Interlocked.Increment(ref violations);
                        }

                        held.Add(item);
                    }
                    else
                    {
                        Owned item = held[^1];
                        held.RemoveAt(held.Count - 1);
                        Volatile.Write(ref item.InUse, 0);
                        pool.Return(item);
                    }
                }
            });
            threads[t].Start();
        }

        foreach (Thread thread in threads)
        {
            thread.Join();
        }

        violations.Should().Be(0);
        pool.Count.Should().BeLessThanOrEqualTo(Capacity);
    }

    private sealed class Owned
    {
        public int InUse;
    }

    [Fact]
    public void Threads_racing_to_grow_a_new_pools_thread_cache_never_share_an_object()
    {
        // Every round a fresh pool, whose thread-cache array each thread's first Return grows (replaced, not copied):
        // a copy could bring back an object its thread had meanwhile taken from the old array.
        const int Threads = 4;
        int violations = 0;
        ValueTaskSourcePool<Owned>? pool = null;
        using var barrier = new Barrier(Threads, _ => pool = new ValueTaskSourcePool<Owned>(static () => new Owned(), capacity: 8));
        var threads = new Thread[Threads];
        for (int t = 0; t < Threads; t++)
        {
            threads[t] = new Thread(() =>
            {
                for (int round = 0; round < 300; round++)
                {
                    barrier.SignalAndWait();
                    ValueTaskSourcePool<Owned> current = pool!;
                    for (int i = 0; i < 50; i++)
                    {
                        Owned a = current.Rent();
                        Owned b = current.Rent();
                        if (Interlocked.Exchange(ref a.InUse, 1) != 0 || Interlocked.Exchange(ref b.InUse, 1) != 0)
                        {
                            Interlocked.Increment(ref violations);
                        }

                        Volatile.Write(ref a.InUse, 0);
                        current.Return(a);
                        Volatile.Write(ref b.InUse, 0);
                        current.Return(b);
                    }

                    barrier.SignalAndWait();
                }
            });
            threads[t].Start();
        }

        foreach (Thread thread in threads)
        {
            thread.Join();
        }

        violations.Should().Be(0);
    }

    [Fact]
    public void A_dropped_pool_is_not_kept_alive_by_the_object_a_living_thread_cached_for_it()
    {
        // Pooled objects usually know their pool (to return themselves). The object this thread cached for a pool the
        // program dropped used to stay in the thread's cache for as long as the thread lived, and with it the pool and
        // everything in its shared storage.
        WeakReference pool = FillAndDropPoolOfSelfReturningObjects(out WeakReference cachedObject);
        Collected.Await(pool, cachedObject);

        pool.IsAlive.Should().BeFalse("nothing but this thread's cache refers to the dropped pool");
        cachedObject.IsAlive.Should().BeFalse("nor to the object it cached for it");
    }

    [Fact]
    public void Pools_created_after_hundreds_of_dropped_ones_still_get_thread_caches()
    {
        for (int i = 0; i < 300; i++)
        {
            var dropped = new ValueTaskSourcePool<object>(static () => new object(), capacity: 4);
            dropped.Return(dropped.Rent());
        }

        var pool = new ValueTaskSourcePool<object>(static () => new object(), capacity: 4);
        object first = pool.Rent();
        pool.Return(first).Should().BeTrue();
        pool.Count.Should().Be(0, "the object returned stays in this thread's cache, not the shared storage");
        pool.Rent().Should().BeSameAs(first);
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private static WeakReference FillAndDropPoolOfSelfReturningObjects(out WeakReference cachedObject)
    {
        ValueTaskSourcePool<SelfReturning>? pool = null;
        pool = new ValueTaskSourcePool<SelfReturning>(() => new SelfReturning(pool!), capacity: 64);
        var rented = Enumerable.Range(0, 32).Select(_ => pool.Rent()).ToList();
        foreach (SelfReturning item in rented)
        {
            item.Dispose();
        }

        pool.Count.Should().Be(31, "the first object returned went to this thread's cache");
        cachedObject = new WeakReference(rented[0]);
        return new WeakReference(pool);
    }

    private sealed class SelfReturning(ValueTaskSourcePool<SelfReturning> pool) : IDisposable
    {
        public byte[] Payload { get; } = new byte[4096];

        public void Dispose() => pool.Return(this);
    }
}
