using System.Reflection;
using System.Runtime.CompilerServices;
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

    // Kills: WakerCore.Dispatch.cs InvokeContinuation, `... != (StatusCompleted | ContinuationFlag) || continuation is null`
    // mutated to `&&` — with a continuation registered, a call while its operation was still pending, or a second call
    // after the first had taken it, ran the continuation (once too early, or twice) instead of throwing; and the
    // message mutated to "" — the exception no longer said which call is allowed.
    [Fact]
    public void InvokeContinuation_refuses_a_registered_continuation_before_it_is_due_and_after_it_was_taken()
    {
        var waker = new QueuedOnlyWaker();
        short token = waker.Core.Version;
        int runs = 0;
        waker.Core.OnCompleted(_ => Interlocked.Increment(ref runs), null, token, ValueTaskSourceOnCompletedFlags.None);

        FluentActions.Invoking(() => waker.Core.InvokeContinuation()).Should().Throw<InvalidOperationException>("the operation is pending")
            .WithMessage("*InvokeContinuation must only be called from the owner's IThreadPoolWorkItem.Execute*");
        runs.Should().Be(0);

        waker.Core.TrySetResult(token, 7).Should().BeTrue();
        waker.Queued.Wait(Guard).Should().BeTrue("the completion queues the waker");
        waker.Core.InvokeContinuation();
        runs.Should().Be(1);
        waker.Core.GetResult(token).Should().Be(7, "the continuation took the outcome");

        FluentActions.Invoking(() => waker.Core.InvokeContinuation()).Should().Throw<InvalidOperationException>("the continuation was taken already");
        runs.Should().Be(1);
    }

    // WakerDispatch.cs Dispatch, the `SynchronizationContext or TaskScheduler when t_runsNoUserCode` case: a thread marked
    // as running no user code (the I/O reactor, a timer driver) that completes an operation awaited under a context or a
    // foreign scheduler never calls that target's Post/QueueTask itself (here the target would run the continuation
    // inline on it); a ThreadPool thread does.
    // Kills: the case's `ThreadPool.UnsafeQueueUserWorkItem(...)` removed (the continuation never ran); the case's guard
    // mutated (the marked thread called Post/QueueTask, which ran the continuation on it); MarkCurrentThreadRunsNoUserCode
    // `t_runsNoUserCode = true` mutated to `false` (likewise).
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task A_thread_that_runs_no_user_code_reaches_a_context_or_foreign_scheduler_through_the_ThreadPool(bool foreignScheduler)
    {
        var waker = new TestWaker<int>();
        short token = waker.Version;
        var target = new InlineRecordingTarget();
        var ran = new TaskCompletionSource<int>(TaskCreationOptions.RunContinuationsAsynchronously);
        Action<object?> continuation = _ => ran.TrySetResult(Environment.CurrentManagedThreadId);
        SchedulerTestHelpers.RunOnNewThread(() =>
        {
            if (foreignScheduler)
            {
                Task.Factory.StartNew(
                    () => waker.Core.OnCompleted(continuation, null, token, ValueTaskSourceOnCompletedFlags.UseSchedulingContext),
                    CancellationToken.None, TaskCreationOptions.None, target.Scheduler).Wait(Guard).Should().BeTrue();
            }
            else
            {
                SynchronizationContext.SetSynchronizationContext(target.Context);
                waker.Core.OnCompleted(continuation, null, token, ValueTaskSourceOnCompletedFlags.UseSchedulingContext);
            }
        });
        target.Calls.Should().Be(foreignScheduler ? 1 : 0, "only the registering task went through the target (precondition)");

        int marked = SchedulerTestHelpers.RunOnNewThread(() =>
        {
            WakerDispatch.MarkCurrentThreadRunsNoUserCode();
            WakerDispatch.CurrentThreadRunsNoUserCode.Should().BeTrue();
            waker.Core.TrySetResult(token, 1).Should().BeTrue();
            return Environment.CurrentManagedThreadId;
        });

        int ranOn = await ran.Task.WaitAsync(Guard);
        ranOn.Should().NotBe(marked, "the target ran the continuation inline, on the thread that called it");
        target.Calls.Should().Be(foreignScheduler ? 2 : 1, "the target was still called, once, from a ThreadPool thread");
        target.LastCaller.Should().NotBe(marked);
    }

    // Kills: WakerDispatch.cs HandOff, `handOff.TargetAccepted();` removed — a hand-off whose Post was accepted kept the
    // hand-off call's hold for ever, so no hand-off ever went back to its pool: every continuation posted to a context
    // allocated a new one. Posted, run and posted again on one thread, a post gets the previous one's hand-off back from
    // the thread's cache. Not from the first post on: a new thread may inherit the id of a thread that died with a
    // hand-off cached in that id's slot (failed the full run once the suite collected more often: the first post's
    // hand-off went to a stripe, the second post took the dead thread's). The second post empties the slot, so the third
    // gets the second's hand-off back.
    [Fact]
    public void A_hand_off_accepted_by_a_context_and_run_goes_back_to_its_pool_for_the_next_post()
    {
        SchedulerTestHelpers.RunOnNewThread(() =>
        {
            var context = new HeldPostsSynchronizationContext();
            var posted = new List<object?>();
            SynchronizationContext.SetSynchronizationContext(new StateRecordingContext(context, posted));
            for (int i = 0; i < 3; i++)
            {
                CompleteOneUnderTheContext(i, "the continuation ran once the context ran its post", () =>
                {
                    context.Held.Should().Be(1, "the continuation is posted to the context");
                    context.RunAll();
                });
            }

            posted.Should().HaveCount(3);
            posted[1].Should().BeOfType<ContextHandOff>().And.BeSameAs(posted[2], "the second hand-off went back to the pool");
        });
    }

    // WakerCore.Dispatch.cs OnCompleted and WaitWhileReserved: a registration that finds a producer between its claim and
    // its publish (status Reserved; simulated here by writing the core's state as TryComplete does) waits for the
    // outcome, then registers and dispatches the continuation itself, since that producer saw no continuation at its
    // claim. The registration provably waits: nothing can complete it while the state stays Reserved.
    // Kills: WaitWhileReserved `== StatusReserved` mutated to `!=` (once the outcome landed the registration spun for
    // ever); OnCompleted's claim loop `current = WaitWhileReserved();` reduced to the call (it kept its Reserved snapshot
    // and spun for ever); the claim loop's `(current & StatusMask) == StatusReserved` mutated to `(current | StatusMask)`
    // (it claimed the Reserved state, a write that the producer's plain publish erases, so its fields were unguarded).
    // Each mutant fails it unless the registering thread is held off its core for the whole pause
    // between entering OnCompleted and its first read of the state.
    [Fact]
    public void A_registration_that_finds_a_producer_between_its_claim_and_its_publish_waits_and_then_dispatches_itself()
    {
        var waker = new QueuedOnlyWaker();
        short token = waker.Core.Version;
        int pending = Volatile.Read(ref StateOf(ref waker.Core));
        Volatile.Write(ref StateOf(ref waker.Core), pending | WakerCore<int>.StatusReserved);

        int runs = 0;
        using var entering = new ManualResetEventSlim();
        var registration = Task.Run(() =>
        {
            entering.Set();
            waker.Core.OnCompleted(_ => Interlocked.Increment(ref runs), null, token, ValueTaskSourceOnCompletedFlags.None);
        });
        entering.Wait(Guard).Should().BeTrue();
        // Not needed for the test to pass: the pause only gives the registration time to read the Reserved state.
        registration.Wait(TimeSpan.FromMilliseconds(100)).Should().BeFalse("the registration waits while a producer holds the claim");
        Volatile.Read(ref StateOf(ref waker.Core)).Should().Be(pending | WakerCore<int>.StatusReserved, "the registration claims nothing while a producer holds the claim");

        Volatile.Write(ref StateOf(ref waker.Core), pending | WakerCore<int>.StatusCompleted); // the producer's publish
        registration.Wait(Guard).Should().BeTrue("the registration goes on once the outcome is published");
        waker.Queued.Wait(Guard).Should().BeTrue("the registration dispatched the continuation: the producer saw none");
        waker.Core.InvokeContinuation();
        runs.Should().Be(1);
        waker.Core.GetResult(token).Should().Be(0);
    }

    // WakerCore.Dispatch.cs OnCompleted, the same wait, but by the time the registration reads the outcome a reader has
    // consumed it (the producer published, and the direct read of the ValueTask took the outcome and is resetting the
    // core; simulated by writing the core's state): the registration lost, so its continuation runs on its own and
    // the core's state is left to the reset.
    // Kills: the claim loop's `continue;` after `current = WaitWhileReserved();` removed (it claimed and published on the
    // consumed state: OnCompleted returned, but the continuation never ran and the state carried its flag into the
    // reset). It fails unless the registering thread is held off its core for the whole pause.
    [Fact]
    public async Task A_registration_that_waited_for_a_producer_and_finds_the_outcome_consumed_loses_and_still_runs_its_continuation()
    {
        var waker = new QueuedOnlyWaker();
        short token = waker.Core.Version;
        int pending = Volatile.Read(ref StateOf(ref waker.Core));
        Volatile.Write(ref StateOf(ref waker.Core), pending | WakerCore<int>.StatusReserved);

        var ran = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        using var entering = new ManualResetEventSlim();
        var registration = Task.Run(() =>
        {
            entering.Set();
            waker.Core.OnCompleted(_ => ran.SetResult(), null, token, ValueTaskSourceOnCompletedFlags.None);
        });
        entering.Wait(Guard).Should().BeTrue();
        // Not needed for the test to pass: the pause only gives the registration time to read the Reserved state.
        registration.Wait(TimeSpan.FromMilliseconds(100)).Should().BeFalse("the registration waits while a producer holds the claim");

        Volatile.Write(ref StateOf(ref waker.Core), pending | WakerCore<int>.StatusConsumed); // published, then consumed by a direct read
        registration.Wait(Guard).Should().BeTrue();
        await ran.Task.WaitAsync(Guard);
        Volatile.Read(ref StateOf(ref waker.Core)).Should().Be(pending | WakerCore<int>.StatusConsumed, "the losing registration touched nothing of the core");
        waker.Queued.IsSet.Should().BeFalse("the core never dispatched the lost registration");
    }

    // ContextHandOff.cs TargetThrew, the branch where the target's callback won the claim: a context whose Post ran the
    // callback inline and then threw. The callback gives up the target's hold; the hand-off call, losing the claim, gives
    // up its own, and the hand-off goes back to the pool (this thread's cache, the last release being on it). Three
    // posts, comparing the second and third, for the reason given in the accepted-post test above.
    // Kills: TargetThrew's `Release();` before `Unhandled.Raise(exception)` removed — the hand-off kept the hand-off
    // call's hold for ever and never went back to its pool, so every such post allocated a new one.
    [Fact]
    public async Task A_hand_off_whose_context_ran_it_inline_and_then_threw_goes_back_to_its_pool_for_the_next_post()
    {
        using UnhandledExceptions.Tolerated reported = UnhandledExceptions.Tolerate(static e => e is HandOffPostFailure);
        var posted = new List<object?>();
        SchedulerTestHelpers.RunOnNewThread(() =>
        {
            SynchronizationContext.SetSynchronizationContext(new RunsInlineThenThrowsContext(posted));
            for (int i = 0; i < 3; i++)
            {
                // The completing thread sees nothing thrown: the failure goes unhandled on the ThreadPool.
                CompleteOneUnderTheContext(i, "Post ran the continuation inline before it threw; it is not queued again");
            }
        });

        await ExpectThreeReportsAndTheSecondHandOffReused(reported, posted, "each Post ran its callback and threw anyway: each failure is reported once");
    }

    // ContextHandOff.cs, the fallback's claim: a context whose Post kept the callback and threw. The fallback runs the
    // continuation on the ThreadPool and gives up the hold it took over from the hand-off call; the context's late
    // callback finds the fallback's claim, reports the failure and gives up the target's hold, and the hand-off goes back
    // to the pool (this thread's cache: the late callback runs here, after the continuation has run). Three posts,
    // comparing the second and third, for the reason given in the accepted-post test above.
    // Kills: IThreadPoolWorkItem.Execute's `Release();` removed, and RunFromTarget's `Release();` on the lost-claim path
    // removed — either kept a hold for ever, so such a hand-off never went back to its pool.
    [Fact]
    public async Task A_hand_off_whose_fallback_ran_it_goes_back_to_its_pool_once_the_contexts_late_callback_came()
    {
        using UnhandledExceptions.Tolerated reported = UnhandledExceptions.Tolerate(static e => e is HandOffPostFailure);
        var posted = new List<object?>();
        SchedulerTestHelpers.RunOnNewThread(() =>
        {
            var context = new HoldsThenThrowsContext(posted);
            SynchronizationContext.SetSynchronizationContext(context);
            for (int i = 0; i < 3; i++)
            {
                var waker = new TestWaker<int>();
                short token = waker.Version;
                var ran = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
                waker.Core.OnCompleted(_ => ran.TrySetResult(), null, token, ValueTaskSourceOnCompletedFlags.UseSchedulingContext);
                waker.Core.TrySetResult(token, i).Should().BeTrue();

                // Post threw: the fallback claims the item and runs it on the ThreadPool (its release comes first).
                ran.Task.Wait(Guard).Should().BeTrue("the fallback runs the continuation");
                context.RunHeld().Should().Be(1, "the context kept the callback (precondition)");
                waker.Core.GetResult(token).Should().Be(i);
            }
        });

        await ExpectThreeReportsAndTheSecondHandOffReused(reported, posted, "each late callback found the fallback's claim and reported the failure once");
    }

    // One waker awaited under the thread's current context and completed on this thread: the completion posts its
    // continuation to that context (a hand-off from the pool); afterPost lets the context run it, if it holds it.
    private static void CompleteOneUnderTheContext(int value, string because, Action? afterPost = null)
    {
        var waker = new TestWaker<int>();
        short token = waker.Version;
        int runs = 0;
        waker.Core.OnCompleted(_ => runs++, null, token, ValueTaskSourceOnCompletedFlags.UseSchedulingContext);
        waker.Core.TrySetResult(token, value).Should().BeTrue();
        afterPost?.Invoke();
        runs.Should().Be(1, because);
        waker.Core.GetResult(token).Should().Be(value);
    }

    /// <summary>
    /// The three posts' failures were each reported once, and the second post's hand-off went back to the pool for the
    /// third. Every report is awaited before any assertion can end the test: one raised after the tolerating scope closed
    /// would end the run.
    /// </summary>
    private static async Task ExpectThreeReportsAndTheSecondHandOffReused(UnhandledExceptions.Tolerated reported, List<object?> posted, string because)
    {
        await SchedulerTestHelpers.WaitUntilAsync(() => reported.SeenCount >= 3);
        reported.SeenCount.Should().Be(3, because);
        posted.Should().HaveCount(3);
        posted[1].Should().BeOfType<ContextHandOff>().And.BeSameAs(posted[2], "the second hand-off went back to the pool");
    }

    // ContextHandOff.cs RunFromTarget, a target that calls back twice while the hand-off is still held (here inside its
    // Post, before the hand-off call gave up its hold): the claim's TargetCalled bit catches the second call, which
    // does not run the continuation again and tells the target's author what went wrong.
    // Kills: ThrowCalledTwice's message mutated to "" (the exception said nothing about the callback run twice).
    [Fact]
    public void A_context_that_runs_a_posted_callback_twice_inside_Post_is_told_so_and_the_continuation_runs_once()
    {
        SchedulerTestHelpers.RunOnNewThread(() =>
        {
            var context = new RunsInlineTwiceContext();
            SynchronizationContext.SetSynchronizationContext(context);
            var waker = new TestWaker<int>();
            short token = waker.Version;
            int runs = 0;
            waker.Core.OnCompleted(_ => runs++, null, token, ValueTaskSourceOnCompletedFlags.UseSchedulingContext);
            waker.Core.TrySetResult(token, 1).Should().BeTrue();

            runs.Should().Be(1, "the second call must not run the continuation again");
            context.SecondCallFailure.Should().BeOfType<InvalidOperationException>()
                .Which.Message.Should().Contain("twice", "the message names the target's bug");
            waker.Core.GetResult(token).Should().Be(1);
        });
    }

    [UnsafeAccessor(UnsafeAccessorKind.Field, Name = "_state")]
    private static extern ref int StateOf(ref WakerCore<int> core);

    private static void ReplaceThreadCache(ValueTaskSourcePool<object> pool, object?[] array) =>
        typeof(ValueTaskSourcePool<object>).GetField("_threadCache", BindingFlags.Instance | BindingFlags.NonPublic)!.SetValue(pool, array);

    /// <summary>A waker whose work item only reports that the core queued it; the test invokes the continuation.</summary>
    private sealed class QueuedOnlyWaker : IThreadPoolWorkItem
    {
        private WakerCore<int> _core;

        public QueuedOnlyWaker() => _core = new WakerCore<int>(this);

        public ref WakerCore<int> Core => ref _core;

        public ManualResetEventSlim Queued { get; } = new();

        void IThreadPoolWorkItem.Execute() => Queued.Set();
    }

    /// <summary>
    /// A SynchronizationContext and a TaskScheduler that run what they are given inline, on the thread that calls
    /// Post/QueueTask, and record that thread.
    /// </summary>
    private sealed class InlineRecordingTarget
    {
        private int _calls;
        private int _lastCaller;

        public InlineRecordingTarget()
        {
            Context = new InlineContext(this);
            Scheduler = new InlineScheduler(this);
        }

        public SynchronizationContext Context { get; }

        public TaskScheduler Scheduler { get; }

        public int Calls => Volatile.Read(ref _calls);

        public int LastCaller => Volatile.Read(ref _lastCaller);

        private void Record()
        {
            Volatile.Write(ref _lastCaller, Environment.CurrentManagedThreadId);
            Interlocked.Increment(ref _calls);
        }

        private sealed class InlineContext(InlineRecordingTarget owner) : SynchronizationContext
        {
            public override void Post(SendOrPostCallback d, object? state)
            {
                owner.Record();
                d(state);
            }

            public override SynchronizationContext CreateCopy() => this;
        }

        private sealed class InlineScheduler(InlineRecordingTarget owner) : TaskScheduler
        {
            protected override void QueueTask(Task task)
            {
                owner.Record();
                TryExecuteTask(task);
            }

            protected override bool TryExecuteTaskInline(Task task, bool taskWasPreviouslyQueued) => false;

            protected override IEnumerable<Task> GetScheduledTasks() => [];
        }
    }

    /// <summary>Forwards posts to <paramref name="inner"/> and records the state of each.</summary>
    private sealed class StateRecordingContext(SynchronizationContext inner, List<object?> states) : SynchronizationContext
    {
        public override void Post(SendOrPostCallback d, object? state)
        {
            states.Add(state);
            inner.Post(d, state);
        }

        public override SynchronizationContext CreateCopy() => this;
    }

    // Not a DeliberateTestException: those are absorbed before a Tolerate scope counts them.
    private sealed class HandOffPostFailure() : Exception("this context took the post and threw anyway");

    /// <summary>Records the state of each post, runs the callback inline, then throws.</summary>
    private sealed class RunsInlineThenThrowsContext(List<object?> states) : SynchronizationContext
    {
        public override void Post(SendOrPostCallback d, object? state)
        {
            states.Add(state);
            d(state);
            throw new HandOffPostFailure();
        }

        public override SynchronizationContext CreateCopy() => this;
    }

    /// <summary>Records the state of each post and keeps the callback, then throws; <see cref="RunHeld"/> runs the kept ones.</summary>
    private sealed class HoldsThenThrowsContext(List<object?> states) : SynchronizationContext
    {
        private readonly Queue<(SendOrPostCallback Callback, object? State)> _held = new();

        public override void Post(SendOrPostCallback d, object? state)
        {
            states.Add(state);
            _held.Enqueue((d, state));
            throw new HandOffPostFailure();
        }

        public override SynchronizationContext CreateCopy() => this;

        /// <summary>Runs the kept callbacks on the caller, in order, and says how many.</summary>
        public int RunHeld()
        {
            int count = 0;
            while (_held.TryDequeue(out (SendOrPostCallback Callback, object? State) post))
            {
                post.Callback(post.State);
                count++;
            }

            return count;
        }
    }

    /// <summary>Runs each posted callback inline twice in a row (a buggy context), recording what the second call threw.</summary>
    private sealed class RunsInlineTwiceContext : SynchronizationContext
    {
        public Exception? SecondCallFailure { get; private set; }

        public override void Post(SendOrPostCallback d, object? state)
        {
            d(state);
            try
            {
                d(state);
            }
            catch (Exception e)
            {
                SecondCallFailure = e;
            }
        }

        public override SynchronizationContext CreateCopy() => this;
    }
}
