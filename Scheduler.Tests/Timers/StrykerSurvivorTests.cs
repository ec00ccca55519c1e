using System.Runtime.CompilerServices;
using System.Threading.Tasks.Sources;
using Scheduler.Tests.Sources;
using Scheduler.Timers;

// The DelayChunk tests hold ValueTasks on purpose (pending delays, reads after the await, stale copies).
#pragma warning disable CA2012

using static Scheduler.Tests.Timers.DelayTestHooks;

namespace Scheduler.Tests.Timers;

/// <summary>
/// Tests written from a Stryker.NET run over Scheduler/Timers: each one checks a behaviour that a surviving mutant
/// (named in its comment) showed no test checked, and passes on the unmutated code. Pure arithmetic, wheels driven
/// by explicit ticks, and delays on a driverless wheel under a manual clock (RunDueTimers): no real time.
/// </summary>
public sealed class StrykerSurvivorTests
{
    // Kills: TimerIntent.cs AbsoluteOf, `deadline == long.MaxValue || overflowed ? MaxValue : ...` mutated to `false ? ...`
    // or to `&&` — a deadline whose distance from the origin overflows (a TimeProvider with negative timestamps, a
    // deadline near long.MaxValue) was clamped to 0 and decoded as due at the origin instead of never; and Clamp's
    // `value < 0 ? 0` mutated to `false ? 0` — a deadline before the origin (a clock that stepped backwards) decoded to
    // a garbage deadline far in the future instead of due at once.
    [Fact]
    public void An_absolute_intent_past_the_value_range_means_never_and_one_before_the_origin_means_at_the_origin()
    {
        const long origin = 1_000;
        TimerIntent.DeadlineOf(TimerIntent.AbsoluteOf(long.MaxValue, origin), origin).Should().Be(long.MaxValue);
        TimerIntent.DeadlineOf(TimerIntent.AbsoluteOf(origin + TimerIntent.MaxValue + 5, origin), origin).Should().Be(long.MaxValue);

        // deadline - origin overflows: still never, not "due at once".
        const long negativeOrigin = long.MinValue + 10;
        long overflowing = TimerIntent.AbsoluteOf(long.MaxValue - 1, negativeOrigin);
        TimerIntent.IsAbsolute(overflowing).Should().BeTrue();
        TimerIntent.DeadlineOf(overflowing, negativeOrigin).Should().Be(long.MaxValue);

        // A deadline before the origin is due at once: it decodes to the origin, never to something later.
        long early = TimerIntent.AbsoluteOf(origin - 50, origin);
        TimerIntent.IsAbsolute(early).Should().BeTrue();
        TimerIntent.DeadlineOf(early, origin).Should().Be(origin);
    }

    // Kills: TimerIntent.cs FiredFrom, `intent & ~((1L << ValueShift) - 1)` mutated (`&` to `|`, the `~` dropped, `- 1`
    // to `+ 1`, `<<` to `>>` or `>>>`) — the fired word kept the absolute kind (a later identical arm would equal it) or
    // lost its deadline. A fired word keeps the deadline, has the Fired kind, and drops the periodic bit.
    [Fact]
    public void A_fired_intent_keeps_the_deadline_and_drops_the_kind_and_the_periodic_bit()
    {
        const long origin = 77;
        long absolute = TimerIntent.AbsoluteOf(origin + 4_096, origin);
        long fired = TimerIntent.FiredFrom(absolute | TimerIntent.Periodic);

        fired.Should().Be(TimerIntent.FiredFrom(absolute));
        fired.Should().NotBe(absolute, "the next arm for the same deadline must differ from the fired word");
        (fired & 3).Should().Be(TimerIntent.Fired);
        TimerIntent.IsAbsolute(fired).Should().BeFalse();
        TimerIntent.IsRelative(fired).Should().BeFalse();
        TimerIntent.DeadlineOf(fired, origin).Should().Be(origin + 4_096);
    }

    // Kills: HierarchicalWheel.cs FastForward, `tick > _elapsed` mutated to `<` or negated, or its body removed, and
    // PrepareInsert, the `FastForward(...)` call removed — an empty wheel no longer caught up after an idle spell, so a
    // new entry was linked on a high level measured from a stale tick and cascaded down through the whole gap; and
    // PrepareInsert's `Math.Max(dueTick, _elapsed + 1)` mutated to `Math.Min` (a future due tick became now: a delay,
    // whose slot keeps this tick, completed early) or to `_elapsed - 1` (a delay's overdue tick was linked on a tick
    // already processed, behind the current slot, and expired up to a revolution of its level late).
    [Fact]
    public void An_insert_into_an_idle_empty_wheel_catches_it_up_to_one_tick_before_now_or_the_due_tick()
    {
        var wheel = new TimingWheel();
        wheel.PrepareInsert(1_000_050, 1_000_000).Should().Be(1_000_050);
        wheel.Elapsed.Should().Be(999_999, "the wheel catches up to one tick short of now");
        var entry = new RecordingEntry();
        wheel.Insert(entry, 1_000_050);
        wheel.TryGetNextExpiration(out long next).Should().BeTrue();
        next.Should().Be(1_000_000, "51 ticks ahead lies on level 1, in the slot starting at now, not on level 3 from tick 0");

        // An overdue change: caught up only to one before its own due tick, so the next advance expires it.
        var overdue = new TimingWheel();
        overdue.PrepareInsert(400, 1_000).Should().Be(400);
        overdue.Elapsed.Should().Be(399);

        // A wheel that holds entries does not move: an overdue tick is raised to the next unprocessed one.
        wheel.PrepareInsert(5, 2_000_000).Should().Be(1_000_000);
        wheel.Elapsed.Should().Be(999_999);
    }

    // Kills: HierarchicalWheel.cs Cleared, `Array.Clear(_occupied)` removed — after RemoveAll (disposal) the occupancy
    // bits of the emptied lists stayed set, so the wheel still reported a next expiration with nothing in it; and
    // TimingWheel.cs RemoveAll, which no timer-wheel test reached without a TimerWheel around it (its loop bound, its
    // `index++`, its `entry is not null`, `removed.Add(entry)` and `Cleared()` mutated).
    [Fact]
    public void Removing_every_entry_at_disposal_leaves_a_wheel_that_reports_no_work()
    {
        var wheel = new TimingWheel();
        wheel.Insert(new RecordingEntry(), 10);
        wheel.Insert(new RecordingEntry(), 5_000);
        wheel.Insert(new RecordingEntry(), 1L << 40);
        var removed = new ExpiredTimers();

        wheel.RemoveAll(removed);

        removed.Count.Should().Be(3);
        wheel.Count.Should().Be(0);
        wheel.TryGetNextExpiration(out _).Should().BeFalse();
    }

    // Kills: HierarchicalWheel.cs AdvancedTo, its body `_elapsed = nowTick` removed or its guard `nowTick > _elapsed`
    // negated, and TimingWheel.cs Advance, the `AdvancedTo(nowTick)` call removed — an advance that found no list due
    // left Elapsed behind (new entries went on levels measured from a stale tick), or a clock read that stepped
    // backwards moved Elapsed back over ticks already processed; and TimingWheel.cs Insert's `Elapsed + 1` mutated to
    // `Elapsed - 1` — a passed tick was linked behind the current slot and expired up to a revolution of its level late.
    [Fact]
    public void An_advance_moves_the_processed_tick_forward_only_and_later_inserts_never_land_on_a_passed_tick()
    {
        var wheel = new TimingWheel();
        var expired = new ExpiredTimers();
        wheel.Insert(new RecordingEntry(), 5_000);

        wheel.Advance(1_000, expired);
        expired.Count.Should().Be(0);
        wheel.Elapsed.Should().Be(1_000, "every tick up to the advance has been processed, due list or not");

        wheel.Advance(10, expired); // a clock that stepped backwards
        wheel.Elapsed.Should().Be(1_000, "ticks already processed are not processed again");

        var late = new RecordingEntry();
        wheel.Insert(late, 500);
        late.DueTick.Should().Be(1_001, "a passed tick becomes the next unprocessed one");
    }

    // Kills: ExpiredTimers.cs, which the wheel tests reached only through small batches: Pairs.Add's `Array.Resize` of
    // the items or of the tokens removed or sized `Count / 2` (a batch past 64 entries threw, or lost the token of
    // every entry past the first 64), RemoveAt's `Count--` removed or made `Count++`, and IsEmpty's `&&` made `||` or
    // either `== 0` made `!= 0` (a batch holding only delays read as empty, so the driver fired nothing).
    [Fact]
    public void A_batch_grows_past_its_first_arrays_keeping_every_token_and_removes_by_moving_the_last_entry()
    {
        var batch = new ExpiredTimers();
        batch.IsEmpty.Should().BeTrue();
        var entries = new RecordingEntry[100];
        for (int i = 0; i < entries.Length; i++)
        {
            entries[i] = new RecordingEntry { Id = i };
            batch.Add(entries[i]);
            batch.SetToken(i, 1_000 + i);
            batch.AddDelay(i * 3);
            batch.SetDelayGeneration(i, 2_000 + i);
        }

        batch.Count.Should().Be(100);
        batch.DelayCount.Should().Be(100);
        for (int i = 0; i < entries.Length; i++)
        {
            batch[i].Should().BeSameAs(entries[i]);
            batch.GetToken(i).Should().Be(1_000 + i);
            batch.GetDelay(i).Should().Be(i * 3);
            batch.GetDelayGeneration(i).Should().Be(2_000 + i);
        }

        batch.RemoveAt(0);
        batch.Count.Should().Be(99);
        batch[0].Should().BeSameAs(entries[99], "order within a batch does not matter: the last entry fills the gap");
        batch.GetToken(0).Should().Be(1_099);

        batch.Clear();
        batch.IsEmpty.Should().BeTrue();
        batch.AddDelay(7);
        batch.IsEmpty.Should().BeFalse("a batch of delays alone still has work");
        batch.Clear();
        batch.Add(entries[0]);
        batch.IsEmpty.Should().BeFalse("a batch of timers alone still has work");
    }

    // Kills: DelayChunk.cs GetStatus, `!DelayWord.IsCompleted(word) ? Pending : ...` negated — a ValueTask's
    // IsCanceled / IsFaulted / IsCompletedSuccessfully went unchecked for the delay's own source (the tests read
    // outcomes only through await); and IsStaleToken, either `||` of `generation differs || ConsumerDone || no owner`
    // made `&&` — the token of a consumed use, once its slot served the next use, read as that use's (Pending), and an
    // await of it took the next use's registration instead of losing at once; and ValidateToken, `ThrowStaleToken()`
    // removed — a stale read of a slot whose next use had completed consumed that use (the tests' stale reads all
    // found a free slot, which the not-completed check refused anyway).
    [Fact]
    public void A_delays_status_reports_pending_each_outcome_and_a_fault_for_a_consumed_token()
    {
        var clock = new ManualClock();
        var wheel = new TimerWheel(TimeSpan.FromMilliseconds(1), clock, startDriver: false);
        using var cts = new CancellationTokenSource();

        ValueTask expiring = wheel.DelayAsync(TimeSpan.FromMilliseconds(5));
        expiring.IsCompleted.Should().BeFalse();
        clock.Advance(TimeSpan.FromMilliseconds(6));
        wheel.RunDueTimers();
        expiring.IsCompletedSuccessfully.Should().BeTrue();
        expiring.IsFaulted.Should().BeFalse();
        expiring.IsCanceled.Should().BeFalse();
        expiring.GetAwaiter().GetResult();
        expiring.IsFaulted.Should().BeTrue("a consumed use's token is stale: a fault, never the slot's next state");

        ValueTask canceled = wheel.DelayAsync(TimeSpan.FromHours(1), cts.Token);
        canceled.IsCompleted.Should().BeFalse();
        ValueTaskSource(ref canceled).Should().BeSameAs(ValueTaskSource(ref expiring));
        ValueTaskToken(ref canceled).Should().NotBe(ValueTaskToken(ref expiring), "the slot serves its next use");
        expiring.IsFaulted.Should().BeTrue("the stale token does not report the pending next use of its slot");
        using var staleResumed = new ManualResetEventSlim();
        expiring.GetAwaiter().UnsafeOnCompleted(staleResumed.Set);
        staleResumed.Wait(TimeSpan.FromSeconds(10)).Should().BeTrue("a stale await loses at once instead of taking the next use's registration");
        cts.Cancel();
        canceled.IsCanceled.Should().BeTrue();
        canceled.IsFaulted.Should().BeFalse();
        canceled.IsCompletedSuccessfully.Should().BeFalse();
        Action staleRead = () => expiring.GetAwaiter().GetResult();
        staleRead.Should().Throw<InvalidOperationException>("a stale token cannot consume the completed next use of its slot");
        Action readCanceled = () => canceled.GetAwaiter().GetResult();
        readCanceled.Should().Throw<OperationCanceledException>().Which.CancellationToken.Should().Be(cts.Token);
        canceled.IsFaulted.Should().BeTrue();

        ValueTask disposed = wheel.DelayAsync(Timeout.InfiniteTimeSpan);
        disposed.IsCompleted.Should().BeFalse();
        wheel.Dispose();
        disposed.IsFaulted.Should().BeTrue("a delay ended by the wheel's disposal is faulted, not canceled");
        disposed.IsCanceled.Should().BeFalse();
        Action readDisposed = () => disposed.GetAwaiter().GetResult();
        readDisposed.Should().Throw<ObjectDisposedException>();
    }

    // Kills: DelayChunk.cs OnCompleted, `ArgumentNullException.ThrowIfNull(continuation)` removed — a null continuation
    // was registered on the pending delay and the driver's dispatch of it failed later, far from the caller.
    [Fact]
    public void Registering_a_null_continuation_on_a_delay_throws_and_leaves_the_delay_awaitable()
    {
        var clock = new ManualClock();
        using var wheel = new TimerWheel(TimeSpan.FromMilliseconds(1), clock, startDriver: false);
        ValueTask delay = wheel.DelayAsync(TimeSpan.FromMilliseconds(5));
        IValueTaskSource source = (IValueTaskSource)ValueTaskSource(ref delay)!;
        short token = ValueTaskToken(ref delay);

        Action register = () => source.OnCompleted(null!, null, token, ValueTaskSourceOnCompletedFlags.None);
        register.Should().Throw<ArgumentNullException>();

        using var resumed = new ManualResetEventSlim();
        delay.GetAwaiter().UnsafeOnCompleted(resumed.Set);
        clock.Advance(TimeSpan.FromMilliseconds(6));
        wheel.RunDueTimers();
        resumed.Wait(TimeSpan.FromSeconds(10)).Should().BeTrue("the real continuation is the one registered");
        delay.GetAwaiter().GetResult();
    }

    // Kills: DelayChunk.cs GetOrCreateSide, `sides[index] ??= new DelaySideState(...)` made `=` — the await that flows
    // an execution context replaced the side state that Start had filled with the cancellation registration: the
    // read then reported the cancellation with no token and left the registration live, so the old token completed
    // the slot's next use; and GetResult, `side.ExecutionContext = null` / `side.Context = null` removed — a consumed
    // slot kept the awaiter's execution context reachable.
    [Fact]
    public void A_cancellable_delay_awaited_with_a_flowed_context_reports_its_token_and_leaves_the_slots_next_use_alone()
    {
        var clock = new ManualClock();
        using var wheel = new TimerWheel(TimeSpan.FromMilliseconds(1), clock, startDriver: false);
        using var cts = new CancellationTokenSource();
        ValueTask first = wheel.DelayAsync(TimeSpan.FromHours(1), cts.Token);
        using var resumed = new ManualResetEventSlim();
        first.GetAwaiter().OnCompleted(resumed.Set); // flows the execution context: the slot's side state holds it

        cts.Cancel();
        resumed.Wait(TimeSpan.FromSeconds(10)).Should().BeTrue();
        Action read = () => first.GetAwaiter().GetResult();
        read.Should().Throw<OperationCanceledException>().Which.CancellationToken.Should().Be(cts.Token);
        DelaySlotHoldsContinuation(first).Should().BeFalse("the consumed slot pins nothing of the await");

        // The same slot again (the free list is LIFO), awaited the same way, this time ended by expiry; its token's
        // later cancellation must not reach the use after it.
        using var secondToken = new CancellationTokenSource();
        ValueTask second = wheel.DelayAsync(TimeSpan.FromMilliseconds(5), secondToken.Token);
        ValueTaskSource(ref second).Should().BeSameAs(ValueTaskSource(ref first));
        using var secondResumed = new ManualResetEventSlim();
        second.GetAwaiter().OnCompleted(secondResumed.Set);
        clock.Advance(TimeSpan.FromMilliseconds(6));
        wheel.RunDueTimers();
        secondResumed.Wait(TimeSpan.FromSeconds(10)).Should().BeTrue();
        second.GetAwaiter().GetResult();
        DelaySlotHoldsContinuation(second).Should().BeFalse();

        ValueTask third = wheel.DelayAsync(TimeSpan.FromHours(1));
        secondToken.Cancel();
        third.IsCompleted.Should().BeFalse("the second use's registration went with it");
        wheel.PendingCount.Should().Be(1);
    }

    // Kills: DelayChunk.cs GetResult, `side.Registration = default` or `side.Token = default` removed — a consumed
    // cancellable delay kept its CancellationTokenSource reachable from the slot's side state until the slot's next
    // cancellable use overwrote it (possibly never).
    [Fact]
    public void A_consumed_cancellable_delay_does_not_keep_its_cancellation_source_alive()
    {
        var clock = new ManualClock();
        using var wheel = new TimerWheel(TimeSpan.FromMilliseconds(1), clock, startDriver: false);
        WeakReference source = RunCancellableDelayToCompletion(wheel, clock);

        Collected.Await(source);
        source.IsAlive.Should().BeFalse("the slot dropped the token and the registration when the delay was consumed");
        GC.KeepAlive(wheel);
    }

    // Kills: DelayChunk.cs GetOrCreateSide, `_side ?? Interlocked.CompareExchange(...) ?? _side!` reduced to the
    // compare-and-swap — every cancellable delay allocated a fresh 64-entry side array (536 bytes) that the CAS then
    // discarded, breaking the allocation-free steady state.
    [Fact]
    public void A_cancellable_delay_allocates_no_more_than_a_plain_one_in_steady_state()
    {
        var clock = new ManualClock();
        using var wheel = new TimerWheel(TimeSpan.FromMilliseconds(1), clock, startDriver: false);
        using var cts = new CancellationTokenSource();

        // Measured against the same loop without a token, so that what the driverless wheel's test pass costs (RunDueTimers
        // makes a new batch each call; the driver thread reuses its own, and TimerResourceTests bounds that path) cancels
        // out: what is left is the token's share (the registration node is reused by the source).
        long plain = BytesPerDelay(CancellationToken.None);
        long cancellable = BytesPerDelay(cts.Token);
        (cancellable - plain).Should().BeLessThan(128, $"a reused slot reuses its side state (plain {plain} B, cancellable {cancellable} B per delay)");

        long BytesPerDelay(CancellationToken token)
        {
            for (int i = 0; i < 50; i++)
            {
                ExpireOne(token);
            }

            const int Delays = 200;
            long before = GC.GetAllocatedBytesForCurrentThread();
            for (int i = 0; i < Delays; i++)
            {
                ExpireOne(token);
            }

            return (GC.GetAllocatedBytesForCurrentThread() - before) / Delays;
        }

        void ExpireOne(CancellationToken token)
        {
            ValueTask delay = wheel.DelayAsync(TimeSpan.FromMilliseconds(2), token);
            clock.Advance(TimeSpan.FromMilliseconds(3));
            wheel.RunDueTimers();
            delay.GetAwaiter().GetResult();
        }
    }

    // Kills: DelayChunk.cs Start, `slab.Free(handle)` removed when the push fails (the wheel disposed between
    // DelayAsync's check and the push, a race window reached here through the internal entry point) — each such call
    // leaked its slot; and `TimerWheel.ThrowDisposed()` removed — the caller got a ValueTask for a freed slot.
    [Fact]
    public void A_delay_started_on_a_disposed_wheel_throws_and_gives_its_slot_back()
    {
        var wheel = new TimerWheel(TimeSpan.FromMilliseconds(1), new ManualClock(), startDriver: false);
        DelaySlab slab = WheelDelays(wheel);
        wheel.Dispose();

        for (int i = 0; i < 3 * DelayChunk.SlotsPerChunk; i++)
        {
            TimeSpan delay = i % 2 == 0 ? TimeSpan.FromMilliseconds(5) : Timeout.InfiniteTimeSpan;
            Action start = () => DelayChunk.Start(slab, delay, default);
            start.Should().Throw<ObjectDisposedException>();
        }

        slab.Capacity.Should().Be(DelayChunk.SlotsPerChunk, "every failed start freed its slot for the next");
    }

    // Kills: DelayChunk.cs OnCompleted's completed path (`IsCompleted(word) ? bits : Registering` with either arm
    // swapped or the condition negated, the early `Dispatch(...); return;` removed) — a continuation registered after
    // the delay had completed (an await that lost the race with the driver between IsCompleted and OnCompleted,
    // reached here directly) never ran, ran twice, or left Registering held so that the read threw.
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void A_continuation_registered_on_a_completed_delay_runs_once_and_the_read_gets_the_outcome(bool cancel)
    {
        var clock = new ManualClock();
        using var wheel = new TimerWheel(TimeSpan.FromMilliseconds(1), clock, startDriver: false);
        using var cts = new CancellationTokenSource();
        ValueTask delay = wheel.DelayAsync(TimeSpan.FromMilliseconds(5), cts.Token);
        if (cancel)
        {
            cts.Cancel();
        }
        else
        {
            clock.Advance(TimeSpan.FromMilliseconds(6));
            wheel.RunDueTimers();
        }

        delay.IsCompleted.Should().BeTrue();
        int runs = 0;
        using var resumed = new ManualResetEventSlim();
        delay.GetAwaiter().UnsafeOnCompleted(() =>
        {
            Interlocked.Increment(ref runs);
            resumed.Set();
        });
        resumed.Wait(TimeSpan.FromSeconds(10)).Should().BeTrue();
        Action read = () => delay.GetAwaiter().GetResult();
        if (cancel)
        {
            read.Should().Throw<OperationCanceledException>().Which.CancellationToken.Should().Be(cts.Token);
        }
        else
        {
            read.Should().NotThrow();
        }

        clock.Advance(TimeSpan.FromMilliseconds(10));
        wheel.RunDueTimers();
        Volatile.Read(ref runs).Should().Be(1);
        DelaySlotHoldsContinuation(delay).Should().BeFalse();
        wheel.PendingCount.Should().Be(0);
    }

    // Kills: DelayChunk.cs GetResult, `ThrowNotCompleted()` removed or its `!IsCompleted` check negated (a read of a
    // pending delay reset its slot under the wheel), and OnCompleted, `LosesRegistration(...)` negated or its
    // `ContinuationRegistered | Registering` check dropped (a second registration on a pending delay overwrote the
    // first's continuation) — single-threaded forms of the misuse races, with no race to lose.
    [Fact]
    public void A_read_or_a_second_registration_of_a_pending_delay_fails_and_the_first_await_still_resumes_once()
    {
        var clock = new ManualClock();
        using var wheel = new TimerWheel(TimeSpan.FromMilliseconds(1), clock, startDriver: false);
        ValueTask delay = wheel.DelayAsync(TimeSpan.FromMilliseconds(5));
        Action early = () => delay.GetAwaiter().GetResult();
        early.Should().Throw<InvalidOperationException>();

        int firstRuns = 0;
        using var first = new ManualResetEventSlim();
        using var second = new ManualResetEventSlim();
        delay.GetAwaiter().UnsafeOnCompleted(() =>
        {
            Interlocked.Increment(ref firstRuns);
            first.Set();
        });
        delay.GetAwaiter().UnsafeOnCompleted(second.Set);
        second.Wait(TimeSpan.FromSeconds(10)).Should().BeTrue("the losing registration's continuation runs at once");
        first.IsSet.Should().BeFalse("the first registration waits for the delay");
        early.Should().Throw<InvalidOperationException>();

        clock.Advance(TimeSpan.FromMilliseconds(6));
        wheel.RunDueTimers();
        first.Wait(TimeSpan.FromSeconds(10)).Should().BeTrue();
        delay.GetAwaiter().GetResult();
        Volatile.Read(ref firstRuns).Should().Be(1);
        wheel.PendingCount.Should().Be(0);
    }

    // Kills: DelayChunk.cs OnCompleted, `ReferenceEquals(shared, context) ? ContextShared : ContextSide` with its arms
    // swapped — the second context's continuation was posted to the chunk's shared (first) context; and GetResult,
    // `side.Context = null` removed — a consumed slot kept the second context reachable.
    [Fact]
    public void Awaiters_under_two_synchronization_contexts_in_one_chunk_each_resume_in_their_own_and_the_slots_let_go()
    {
        var clock = new ManualClock();
        using var wheel = new TimerWheel(TimeSpan.FromMilliseconds(1), clock, startDriver: false);
        var shared = new RecordingSynchronizationContext();
        var other = new RecordingSynchronizationContext();
        ValueTask first = wheel.DelayAsync(TimeSpan.FromMilliseconds(5));
        ValueTask second = wheel.DelayAsync(TimeSpan.FromMilliseconds(5));
        ValueTaskSource(ref second).Should().BeSameAs(ValueTaskSource(ref first), "both slots are in the first chunk");
        SynchronizationContext? firstIn = null, secondIn = null;
        using var firstRan = new ManualResetEventSlim();
        using var secondRan = new ManualResetEventSlim();
        OnCompletedUnder(shared, first, () =>
        {
            firstIn = SynchronizationContext.Current;
            firstRan.Set();
        });
        OnCompletedUnder(other, second, () =>
        {
            secondIn = SynchronizationContext.Current;
            secondRan.Set();
        });

        clock.Advance(TimeSpan.FromMilliseconds(6));
        wheel.RunDueTimers();
        firstRan.Wait(TimeSpan.FromSeconds(10)).Should().BeTrue();
        secondRan.Wait(TimeSpan.FromSeconds(10)).Should().BeTrue();
        firstIn.Should().BeSameAs(shared);
        secondIn.Should().BeSameAs(other, "the second context is the slot's own, not the chunk's shared one");
        shared.Posts.Should().Be(1);
        other.Posts.Should().Be(1);

        first.GetAwaiter().GetResult();
        second.GetAwaiter().GetResult();
        DelaySlotHoldsContinuation(first).Should().BeFalse();
        DelaySlotHoldsContinuation(second).Should().BeFalse("the consumed slot no longer references its context");
    }

    // Kills: DelayChunk.cs constructor, `_slots[index].Prev = DelayWheel.NotLinked` removed — a fresh slot read as
    // linked (Prev 0), so a delay canceled before the driver had linked it was "unlinked" from a list it was never
    // on: the wheel's count went negative (the pending delay beside it was counted out) and slot 0's links were torn.
    [Fact]
    public void A_delay_canceled_before_the_driver_linked_it_leaves_the_wheels_lists_and_count_alone()
    {
        var clock = new ManualClock();
        using var wheel = new TimerWheel(TimeSpan.FromMilliseconds(1), clock, startDriver: false);
        using var cts = new CancellationTokenSource();
        ValueTask canceled = wheel.DelayAsync(TimeSpan.FromHours(1), cts.Token);
        cts.Cancel();
        ValueTask kept = wheel.DelayAsync(TimeSpan.FromMilliseconds(5));

        wheel.PendingCount.Should().Be(1, "the canceled delay was never linked; the other one is");
        Action read = () => canceled.GetAwaiter().GetResult();
        read.Should().Throw<OperationCanceledException>();
        clock.Advance(TimeSpan.FromMilliseconds(6));
        wheel.RunDueTimers();
        kept.IsCompletedSuccessfully.Should().BeTrue();
        kept.GetAwaiter().GetResult();
        wheel.PendingCount.Should().Be(0);
    }

    // Kills: DelayChunk.cs Release, `owner == DelayWord.WheelOwned && (word & DelayWord.Enqueued) != 0` with `&&` made
    // `||` — a delay canceled after the driver had taken it into its batch was never let go by the batch, so its slot
    // never went back to the free list; and OnCanceled, the `Interlocked.And(ref slot.Word, ~(Enqueued | WheelOwned))`
    // of a cancellation whose push failed (the wheel disposed under it) removed — the wheel kept owning that slot for
    // good. Both are race windows of a cancellation against the driver; here the cancellation comes, deterministically,
    // from the continuation of the other delay of the same batch, run inline by its context.
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void A_delay_canceled_while_the_drivers_batch_holds_it_still_gives_its_slot_back(bool dispose)
    {
        var clock = new ManualClock();
        var wheel = new TimerWheel(TimeSpan.FromMilliseconds(1), clock, startDriver: false);
        DelaySlab slab = WheelDelays(wheel);
        using var firstToken = new CancellationTokenSource();
        using var secondToken = new CancellationTokenSource();
        ValueTask first = wheel.DelayAsync(TimeSpan.FromMilliseconds(5), firstToken.Token);
        ValueTask second = wheel.DelayAsync(TimeSpan.FromMilliseconds(5), secondToken.Token);
        wheel.RunDueTimers(); // both linked, due at the same tick

        // Whichever the batch completes first cancels the other, which the batch holds by then.
        OnCompletedInline(first, secondToken.Cancel);
        OnCompletedInline(second, firstToken.Cancel);
        if (dispose)
        {
            wheel.Dispose();
        }
        else
        {
            clock.Advance(TimeSpan.FromMilliseconds(6));
            wheel.RunDueTimers();
        }

        Exception?[] outcomes = [Record.Exception(() => first.GetAwaiter().GetResult()), Record.Exception(() => second.GetAwaiter().GetResult())];
        outcomes.Should().ContainSingle(e => e is OperationCanceledException, "the one completed first canceled the other");
        outcomes.Should().ContainSingle(e => dispose ? e is ObjectDisposedException : e == null);
        if (!dispose)
        {
            wheel.RunDueTimers(); // reconciles the canceled one's unlink request
            wheel.PendingCount.Should().Be(0);
        }

        for (int i = 0; i < DelayChunk.SlotsPerChunk; i++)
        {
            slab.Rent();
        }

        slab.Capacity.Should().Be(DelayChunk.SlotsPerChunk, "both slots went back to the free list");
        wheel.Dispose();
    }

    // Kills: DelayChunk.cs OnCompleted, `ReferenceEquals(shared, context) ? ContextShared : ContextSide` mutated to
    // `false ? ...` — every awaiter under the chunk's shared context got a side state of its own holding the same
    // reference (the chunk's 64-entry side array, then an object per slot) instead of a bit in the slot's word: the
    // memory per pending delay that the shared reference is there to save, with every continuation still posted right.
    [Fact]
    public void Awaiters_under_the_chunks_one_context_refer_to_it_with_a_bit_and_need_no_side_state()
    {
        var clock = new ManualClock();
        using var wheel = new TimerWheel(TimeSpan.FromMilliseconds(1), clock, startDriver: false);
        var context = new RecordingSynchronizationContext();
        var delays = new ValueTask[8];
        int ran = 0;
        for (int i = 0; i < delays.Length; i++)
        {
            delays[i] = wheel.DelayAsync(TimeSpan.FromMilliseconds(5));

            // As an await registers: without flowing the execution context, which would need a side state of its own.
            OnCompletedUnder(context, delays[i], () => Interlocked.Increment(ref ran), flowExecutionContext: false);
        }

        var chunk = (DelayChunk)ValueTaskSource(ref delays[0])!;
        for (int i = 0; i < delays.Length; i++)
        {
            ValueTaskSource(ref delays[i]).Should().BeSameAs(chunk, "all eight slots are in the first chunk");
        }

        ChunkSideStates(chunk).Should().BeNull("awaiters under the chunk's shared context keep no reference of their own");

        clock.Advance(TimeSpan.FromMilliseconds(6));
        wheel.RunDueTimers();
        SpinWait.SpinUntil(() => Volatile.Read(ref ran) == delays.Length, TimeSpan.FromSeconds(30)).Should().BeTrue();
        context.Posts.Should().Be(delays.Length, "each continuation was posted to the shared context");
        foreach (ValueTask delay in delays)
        {
            delay.GetAwaiter().GetResult();
        }

        ChunkSideStates(chunk).Should().BeNull();
    }

    // Kills: DelayChunk.cs IsStaleToken, `(word & (WheelOwned | BatchOwned | StatusMask)) == 0` mutated to
    // `(word | ...) == 0` (never true) — a slot's 10-bit generation wraps after 1,024 uses, and a token that old named a
    // free slot whose generation had come round to its own. The mutant took it for the slot's live use, still pending:
    // the ValueTask read as not completed, and an await of it claimed the registration of a slot nobody used, which
    // its next use then found taken.
    [Fact]
    public void A_token_of_a_free_slot_whose_generation_wrapped_round_to_it_is_stale_and_leaves_the_next_use_alone()
    {
        var clock = new ManualClock();
        using var wheel = new TimerWheel(TimeSpan.FromMilliseconds(1), clock, startDriver: false);
        ValueTask old = ExpireAndRead();
        short oldToken = ValueTaskToken(ref old);
        for (int use = 1; use < 1 << DelayWord.GenerationBits; use++)
        {
            ValueTask later = ExpireAndRead();
            (ValueTaskToken(ref later) >> DelayWord.GenerationBits).Should().Be(oldToken >> DelayWord.GenerationBits, "the free list hands the same slot back");
        }

        // The slot is free, and its generation is the old token's again.
        var source = (IValueTaskSource)ValueTaskSource(ref old)!;
        source.GetStatus(oldToken).Should().Be(ValueTaskSourceStatus.Faulted, "a stale token reports a fault, never a pending use");
        old.IsCompleted.Should().BeTrue();
        using var loserRan = new ManualResetEventSlim();
        old.GetAwaiter().OnCompleted(loserRan.Set);
        loserRan.Wait(TimeSpan.FromSeconds(30)).Should().BeTrue("a stale await loses at once and runs on its own");
        Action read = () => old.GetAwaiter().GetResult();
        read.Should().Throw<InvalidOperationException>();

        // The slot's next use registers, completes and reads as any other.
        ValueTask next = wheel.DelayAsync(TimeSpan.FromMilliseconds(2));
        (ValueTaskToken(ref next) >> DelayWord.GenerationBits).Should().Be(oldToken >> DelayWord.GenerationBits);
        using var nextRan = new ManualResetEventSlim();
        next.GetAwaiter().OnCompleted(nextRan.Set);
        nextRan.IsSet.Should().BeFalse();
        clock.Advance(TimeSpan.FromMilliseconds(3));
        wheel.RunDueTimers();
        nextRan.Wait(TimeSpan.FromSeconds(30)).Should().BeTrue();
        next.GetAwaiter().GetResult();

        ValueTask ExpireAndRead()
        {
            ValueTask delay = wheel.DelayAsync(TimeSpan.FromMilliseconds(2));
            clock.Advance(TimeSpan.FromMilliseconds(3));
            wheel.RunDueTimers();
            delay.GetAwaiter().GetResult();
            return delay;
        }
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private static WeakReference RunCancellableDelayToCompletion(TimerWheel wheel, ManualClock clock)
    {
        var cts = new CancellationTokenSource();
        ValueTask delay = wheel.DelayAsync(TimeSpan.FromMilliseconds(5), cts.Token);
        clock.Advance(TimeSpan.FromMilliseconds(6));
        wheel.RunDueTimers();
        delay.GetAwaiter().GetResult();
        return new WeakReference(cts);
    }

    [UnsafeAccessor(UnsafeAccessorKind.Field, Name = "_delays")]
    private static extern ref DelaySlab WheelDelays(TimerWheel wheel);

    [UnsafeAccessor(UnsafeAccessorKind.Field, Name = "_side")]
    private static extern ref DelaySideState?[]? ChunkSideStates(DelayChunk chunk);
}
