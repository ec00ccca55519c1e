using System.Reflection;
using System.Runtime.ExceptionServices;
using System.Threading.Tasks.Sources;
using Scheduler.Native;
using Scheduler.Sources;
using Scheduler.Tests.Scheduling;

namespace Scheduler.Tests.Sources;

/// <summary>
/// Tests written from a Stryker.NET run over Scheduler/Sources: each one checks a behaviour that a surviving mutant
/// (named in its comment) showed no test checked, and passes on the unmutated code.
/// </summary>
public sealed class StrykerSurvivorTests
{
    private static readonly TimeSpan Guard = TimeSpan.FromSeconds(10);

    // Kills: WakerCore.cs GetResult, `ValidateToken(state, token)` removed — a stale token read the outcome of the core's
    // next operation once that one had completed, instead of throwing.
    [Fact]
    public void GetResult_with_the_token_of_a_previous_operation_throws_even_when_the_next_operation_has_completed()
    {
        var waker = new TestWaker<int>();
        short first = waker.Version;
        waker.Core.TrySetResult(first, 1).Should().BeTrue();
        waker.Core.TryReset(first).Should().BeTrue();
        short second = waker.Version;
        waker.Core.TrySetResult(second, 2).Should().BeTrue();

        Action stale = () => waker.Core.GetResult(first);
        stale.Should().Throw<InvalidOperationException>("the token names an operation that was already reset");
        waker.Core.GetResult(second).Should().Be(2);
    }

    // Kills: WakerCore.cs Consume, `ValidateToken(state, token)` removed — a stale token consumed (and reset) the core's
    // next operation once that one had completed, stealing its outcome from its real reader.
    [Fact]
    public void Consume_with_the_token_of_a_previous_operation_throws_and_leaves_the_next_operation_to_its_reader()
    {
        var waker = new TestWaker<int>();
        short first = waker.Version;
        waker.Core.TrySetResult(first, 1).Should().BeTrue();
        waker.Core.Consume(first, out _, out _);
        short second = waker.Version;
        waker.Core.TrySetResult(second, 2).Should().BeTrue();

        Action stale = () => waker.Core.Consume(first, out _, out _);
        stale.Should().Throw<InvalidOperationException>("the token names an operation that was already consumed");
        waker.Core.GetStatus(second).Should().Be(ValueTaskSourceStatus.Succeeded, "the stale read consumed nothing");
        waker.Core.Consume(second, out int result, out ExceptionDispatchInfo? error);
        result.Should().Be(2);
        error.Should().BeNull();
    }

    // Kills: WakerCore.cs HoldsContinuationForTests, `||` mutated to `&&` — the probe that other tests use to show a reset
    // core holds no continuation reported "nothing held" for a continuation registered without state or contexts, which
    // made those checks vacuous. The core holds a registered continuation until its reset and nothing after it.
    [Fact]
    public async Task A_registered_continuation_is_held_by_the_core_until_the_reset_after_it_ran()
    {
        var waker = new TestWaker<int>();
        short token = waker.Version;
        var ran = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);

        waker.Core.HoldsContinuationForTests.Should().BeFalse();
        await Task.Run(() => waker.Core.OnCompleted(_ => ran.SetResult(), null, token, ValueTaskSourceOnCompletedFlags.None)).WaitAsync(Guard);
        waker.Core.HoldsContinuationForTests.Should().BeTrue("a continuation without state or contexts is still a continuation");

        waker.Core.TrySetResult(token, 1).Should().BeTrue();
        await ran.Task.WaitAsync(Guard);
        waker.Core.Consume(token, out int result, out _);
        result.Should().Be(1);
        waker.Core.HoldsContinuationForTests.Should().BeFalse("the reset drops the continuation");
    }

    // ValueTaskSourcePool.cs, the thread-cache array's bounds. A thread's offset is always a multiple of the stride, and
    // so is the array's length: a thread whose id is just past the ids the array was sized for has an offset equal to
    // the length, and it must go past the array, not index it.
    // Kills: Rent `(uint)offset < (uint)cache.Length` mutated to `<=`; Return `(uint)offset < (uint)cache.Length` mutated
    // to `<=`; TryPutInNewThreadCache `offset < cache.Length` mutated to `<=` (each indexed one past the array and threw).
    [Fact]
    public void A_thread_whose_offset_equals_the_length_of_a_pools_thread_cache_array_rents_and_returns_past_it()
    {
        var pool = new ValueTaskSourcePool<object>(static () => new object(), capacity: 16);
        SchedulerTestHelpers.RunOnNewThread(() =>
        {
            int offset = PoolThreadCache.AssignOffset();
            offset.Should().BePositive("a new thread gets an id (precondition)");
            ReplaceThreadCache(pool, new object?[offset]);

            object created = pool.Rent();
            pool.Return(created).Should().BeTrue();
            pool.Count.Should().Be(0, "the return grew the array to hold this thread's object");
            pool.Rent().Should().BeSameAs(created);
        });
    }

    // ValueTaskSourcePool.cs TryPutInNewThreadCache, a thread without an id whose new id the pool's array already covers
    // (an id given back by an ended thread, below the ids the array was sized for): its first return goes to its slot.
    // Kills: `cache[offset] is not null` mutated to `is null` (the object went to the shared storage);
    // `cache[offset] = item;` removed (the return reported the object kept and lost it).
    [Fact]
    public void A_new_threads_first_return_goes_to_its_slot_of_a_thread_cache_array_that_already_covers_it()
    {
        var pool = new ValueTaskSourcePool<object>(static () => new object(), capacity: 16);
        ReplaceThreadCache(pool, new object?[(PoolThreadCache.MaxThreads + 1) * PoolThreadCache.Stride]);
        object item = new();
        SchedulerTestHelpers.RunOnNewThread(() =>
        {
            PoolThreadCache.Offset.Should().Be(-1, "a new thread has no id yet (precondition)");
            pool.Return(item).Should().BeTrue();
            pool.Count.Should().Be(0, "the object went to the thread's slot, not the shared storage");
            pool.Rent().Should().BeSameAs(item);
        });
    }

    // ValueTaskSourcePool.cs TryPutInNewThreadCache, the same, but the slot holds an object that the id's previous thread
    // left there: that object is a free pooled one and stays; the returned one goes to the shared storage.
    // Kills: `return false;` after `cache[offset] is not null` removed, and `is not null` mutated to `is null` (both
    // overwrote the left object, losing it).
    [Fact]
    public void A_new_threads_first_return_keeps_the_object_that_its_ids_previous_thread_left_in_its_slot()
    {
        var pool = new ValueTaskSourcePool<object>(static () => new object(), capacity: 16);
        object leftover = new();
        var array = new object?[(PoolThreadCache.MaxThreads + 1) * PoolThreadCache.Stride];
        Array.Fill(array, leftover);
        ReplaceThreadCache(pool, array);
        object item = new();
        SchedulerTestHelpers.RunOnNewThread(() =>
        {
            PoolThreadCache.Offset.Should().Be(-1, "a new thread has no id yet (precondition)");
            pool.Return(item).Should().BeTrue();
            pool.Count.Should().Be(1, "the thread's slot was taken, so the object went to the shared storage");
            pool.Rent().Should().BeSameAs(leftover, "the thread's slot comes first");
            pool.Rent().Should().BeSameAs(item);
        });
    }

    // ValueTaskSourcePool.cs, the per-processor slots: everything a thread returned up to the capacity is rented back
    // without the factory, from its own processor's slots, the overflow queue and the other processors' slots alike. The
    // thread is pinned to a CPU of the first stripe (of two or more), so the search over the other stripes starts below
    // the last one whatever CPU the test would otherwise run on; the test passes the same unpinned.
    // Kills: Rent `(stripe + i) % _stripeCount` mutated to `stripe - i` and Return's likewise (a negative stripe indexed
    // before the slots); Rent's `{ return item; }` in the other-stripes loop removed, TryTakeFromStripe's
    // `CompareExchange(...) == item` mutated to `!=` and its `return true` mutated to `return false` (each took an object
    // out of its slot and dropped it, so the factory made another).
    [Fact]
    public void Everything_returned_up_to_the_capacity_is_rented_back_from_every_stripe_without_the_factory()
    {
        int stripes = Math.Min(Environment.ProcessorCount, 64);
        int created = 0;
        var pool = new ValueTaskSourcePool<object>(() =>
        {
            created++;
            return new object();
        }, capacity: 4 * stripes); // two slots per stripe, the other half in the overflow queue
        SchedulerTestHelpers.RunOnNewThread(() =>
        {
            int cpu = CpuAffinity.AllowedCpus().FirstOrDefault(c => c % stripes != stripes - 1, -1);
            if (stripes > 1 && cpu >= 0 && CpuAffinity.SetCallingThreadAffinity([cpu]))
            {
                SpinWait.SpinUntil(() => Thread.GetCurrentProcessorId() == cpu, Guard).Should().BeTrue("the thread runs on the CPU it is pinned to");
            }

            int total = pool.Capacity + 1; // the shared storage and this thread's cache
            var items = Enumerable.Range(0, total).Select(_ => pool.Rent()).ToList();
            created.Should().Be(total);
            items.Count(pool.Return).Should().Be(total, "the shared storage and the thread's cache hold them all");
            pool.Count.Should().Be(pool.Capacity);

            var rented = Enumerable.Range(0, total).Select(_ => pool.Rent()).ToHashSet(ReferenceEqualityComparer.Instance);
            created.Should().Be(total, "every rent found a returned object");
            rented.Should().HaveCount(total);
            pool.Count.Should().Be(0);
        });
    }

    // Kills: ValueTaskSourcePool.cs Rent, the message of a factory that returned null mutated to "".
    [Fact]
    public void A_factory_that_returns_null_is_reported_with_the_pools_type()
    {
        var pool = new ValueTaskSourcePool<object>(static () => null!, capacity: 4);
        Action rent = () => pool.Rent();
        rent.Should().Throw<InvalidOperationException>().WithMessage("*factory of ValueTaskSourcePool<Object> returned null*");
    }

    // PoolThreadCache.cs ArrayLengthFor: a pool's thread-cache array covers the offset asked for and every id handed out
    // so far (two threads hold ids meanwhile, so at least id 2 is out), within the most ids there are.
    // Kills: `Math.Max(offset / Stride, s_highestId) + 1` mutated to `- 1` and `Math.Max` mutated to `Math.Min`;
    // `Math.Min(..., MaxThreads + 1u)` mutated to `MaxThreads - 1u` (ids 1023 and 1024 never fit: their returns would grow
    // the array forever); AssignOffset's `candidate > s_highestId` mutated to `<` or negated, and its
    // `Volatile.Write(ref s_highestId, candidate)` removed (the highest id stayed 0, so arrays covered only their grower).
    [Fact]
    public void A_thread_cache_array_covers_the_offset_asked_for_and_every_id_handed_out()
    {
        using var leave = new ManualResetEventSlim();
        var offsets = new int[2];
        var holders = new Thread[2];
        using var assigned = new CountdownEvent(holders.Length);
        for (int i = 0; i < holders.Length; i++)
        {
            int index = i;
            holders[i] = new Thread(() =>
            {
                offsets[index] = PoolThreadCache.AssignOffset();
                assigned.Signal();
                leave.Wait();
            }) { IsBackground = true };
            holders[i].Start();
        }

        try
        {
            assigned.Wait(Guard).Should().BeTrue("the holders start");
            offsets.Should().OnlyContain(offset => offset > 0, "each holder gets an id (precondition)");
            int highest = offsets.Max();
            PoolThreadCache.ArrayLengthFor(PoolThreadCache.Stride).Should().BeGreaterThan(highest, "the array covers every id handed out");
            foreach (int offset in new[] { PoolThreadCache.Stride, highest, PoolThreadCache.MaxThreads * PoolThreadCache.Stride })
            {
                int length = PoolThreadCache.ArrayLengthFor(offset);
                length.Should().BeGreaterThan(offset, "the array covers offset {0}", offset);
                length.Should().BeLessThanOrEqualTo((PoolThreadCache.MaxThreads + 1) * PoolThreadCache.Stride);
                (length % PoolThreadCache.Stride).Should().Be(0);
            }
        }
        finally
        {
            leave.Set();
            foreach (Thread holder in holders)
            {
                holder.Join(Guard);
            }
        }
    }

    // PoolThreadCache.cs AssignOffset: a thread keeps its id when a pool whose array does not cover it yet asks again,
    // so what it cached in other pools stays its own.
    // Kills: `offset >= 0 || t_releasesWhenNoneLeft == ...` mutated to `&&` (each ask gave the thread a new id, and its
    // object cached in the first pool was lost to it).
    [Fact]
    public void A_thread_keeps_its_id_and_its_cached_objects_when_it_first_returns_to_another_pool()
    {
        var first = new ValueTaskSourcePool<object>(static () => new object(), capacity: 16);
        var second = new ValueTaskSourcePool<object>(static () => new object(), capacity: 16);
        object x = new(), y = new();
        SchedulerTestHelpers.RunOnNewThread(() =>
        {
            first.Return(x).Should().BeTrue();
            int offset = PoolThreadCache.Offset;
            offset.Should().BePositive("the first return gave the thread an id (precondition)");
            second.Return(y).Should().BeTrue();
            PoolThreadCache.Offset.Should().Be(offset);
            first.Count.Should().Be(0, "x is in the thread's cache of the first pool");
            first.Rent().Should().BeSameAs(x);
            second.Rent().Should().BeSameAs(y);
        });
    }

    private static void ReplaceThreadCache(ValueTaskSourcePool<object> pool, object?[] array) =>
        typeof(ValueTaskSourcePool<object>).GetField("_threadCache", BindingFlags.Instance | BindingFlags.NonPublic)!.SetValue(pool, array);
}
