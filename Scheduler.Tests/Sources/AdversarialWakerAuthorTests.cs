using System.Collections.Concurrent;
using System.Runtime.CompilerServices;
using System.Threading.Tasks.Sources;
using Scheduler.Sources;
using Scheduler.Tests.Scheduling;
using Scheduler.Timers;

namespace Scheduler.Tests.Sources;

/// <summary>
/// Adversarial use of the author-side building blocks: the docs/wakers.md <c>WakerCore</c> recipe built verbatim (with a
/// per-test pool) and consumed through Preserve, WhenAny, WhenAll, Parallel.ForEachAsync, await foreach, racing
/// cancellation registrations, a foreign exclusive TaskScheduler, the UseSynchronizationContext mode, finalizers and
/// timer callbacks; <c>ValueTaskSourcePool</c> at its constructor boundaries and under thread churn; the 16-bit version
/// across its wrap; an author's Reset racing a registration.
/// </summary>
public sealed class AdversarialWakerAuthorTests
{
    private static readonly TimeSpan Guard = TimeSpan.FromSeconds(10);

    private enum PreserveTag
    {
    }

    private enum WhenAnyTag
    {
    }

    private enum WhenAllTag
    {
    }

    private enum CancelRaceTag
    {
    }

    private enum ForEachTag
    {
    }

    private enum EnumTag
    {
    }

    private enum ExclusiveTag
    {
    }

    private enum SyncContextTag
    {
    }

    private enum FinalizerTag
    {
    }

    private enum TimerTag
    {
    }

    private enum PairDoneTag
    {
    }

    private enum LongRunningTag
    {
    }

    private enum AbandonedTag
    {
    }

    private enum DisposedTag
    {
    }

    [Fact]
    public async Task Preserve_of_a_pending_recipe_operation_can_be_awaited_twice_and_pools_the_object_once()
    {
        for (int i = 0; i < 200; i++)
        {
            var op = RecipeOp<PreserveTag>.Rent();
            short version = op.Version;
            long returnsBefore = op.Returns;
            ValueTask<int> preserved = op.Task.Preserve();
            var producer = Task.Run(() => op.Complete(version, i));

            (await preserved.AsTask().WaitAsync(Guard)).Should().Be(i);
            (await preserved.AsTask().WaitAsync(Guard)).Should().Be(i, "a preserved ValueTask wraps a Task and may be awaited again");
            (await producer.WaitAsync(Guard)).Should().BeTrue();
            op.Complete(version, -1).Should().BeFalse("the operation was consumed");
            (op.Returns - returnsBefore).Should().Be(1, "the object goes back to its pool exactly once");
        }
    }

    [Fact]
    public async Task Preserve_of_an_already_completed_or_faulted_recipe_operation_consumes_it_once_and_keeps_the_outcome()
    {
        var ok = RecipeOp<PreserveTag>.Rent();
        short okVersion = ok.Version;
        long okReturns = ok.Returns;
        ok.Complete(okVersion, 11).Should().BeTrue();
        ValueTask<int> preservedOk = ok.Task.Preserve();
        (ok.Returns - okReturns).Should().Be(1, "Preserve of a completed operation reads (and so consumes) it at once");
        (await preservedOk).Should().Be(11);
        (await preservedOk).Should().Be(11);

        var bad = RecipeOp<PreserveTag>.Rent();
        short badVersion = bad.Version;
        long badReturns = bad.Returns;
        var error = new InvalidDataException("preserved");
        bad.Fail(badVersion, error).Should().BeTrue();
        ValueTask<int> preservedBad = bad.Task.Preserve();
        (bad.Returns - badReturns).Should().Be(1);
        for (int k = 0; k < 2; k++)
        {
            var thrown = await FluentActions.Awaiting(async () => await preservedBad).Should().ThrowAsync<InvalidDataException>();
            thrown.Which.Should().BeSameAs(error);
        }

        bad.Fail(badVersion, error).Should().BeFalse();
    }

    [Fact]
    public async Task WhenAny_over_recipe_operations_lets_the_losers_complete_later_and_each_is_pooled_once()
    {
        for (int round = 0; round < 100; round++)
        {
            var ops = new RecipeOp<WhenAnyTag>[4];
            var versions = new short[ops.Length];
            var tasks = new Task<int>[ops.Length];
            for (int i = 0; i < ops.Length; i++)
            {
                ops[i] = RecipeOp<WhenAnyTag>.Rent();
                versions[i] = ops[i].Version;
                tasks[i] = ops[i].Task.AsTask();
            }

            ops.Distinct().Should().HaveCount(ops.Length, "four rentals in flight are four objects");
            long[] returnsBefore = ops.Select(o => o.Returns).ToArray();
            int winner = round % ops.Length;
            ops[winner].Complete(versions[winner], 100 + winner).Should().BeTrue();
            Task<int> first = await Task.WhenAny(tasks).WaitAsync(Guard);
            first.Should().BeSameAs(tasks[winner]);

            // The losers complete afterwards, in reverse, some with errors.
            for (int i = ops.Length - 1; i >= 0; i--)
            {
                if (i == winner)
                {
                    continue;
                }

                if (i % 2 == 0)
                {
                    ops[i].Complete(versions[i], 100 + i).Should().BeTrue();
                }
                else
                {
                    ops[i].Fail(versions[i], new TimeoutException("op " + i)).Should().BeTrue();
                }
            }

            for (int i = 0; i < ops.Length; i++)
            {
                if (i != winner && i % 2 == 1)
                {
                    await FluentActions.Awaiting(() => tasks[i].WaitAsync(Guard)).Should().ThrowAsync<TimeoutException>().WithMessage("op " + i);
                }
                else
                {
                    (await tasks[i].WaitAsync(Guard)).Should().Be(100 + i);
                }

                (ops[i].Returns - returnsBefore[i]).Should().Be(1);
            }
        }
    }

    [Fact]
    public async Task WhenAll_over_recipe_operations_with_mixed_outcomes_reports_the_exact_exception_instances()
    {
        const int Count = 300;
        var ops = new RecipeOp<WhenAllTag>[Count];
        var versions = new short[Count];
        var tasks = new Task<int>[Count];
        for (int i = 0; i < Count; i++)
        {
            ops[i] = RecipeOp<WhenAllTag>.Rent();
            versions[i] = ops[i].Version;
            tasks[i] = ops[i].Task.AsTask();
        }

        var errors = new ConcurrentDictionary<int, Exception>();
        using var cts = new CancellationTokenSource();
        cts.Cancel();
        var producers = Enumerable.Range(0, 2).Select(p => Task.Run(() =>
        {
            for (int i = Count - 1 - p; i >= 0; i -= 2)
            {
                bool won = (i % 3) switch
                {
                    0 => ops[i].Complete(versions[i], i),
                    1 => ops[i].Fail(versions[i], errors.GetOrAdd(i, n => new InvalidDataException("e" + n))),
                    _ => ops[i].Cancel(versions[i], cts.Token),
                };
                won.Should().BeTrue();
            }
        })).ToArray();
        await Task.WhenAll(producers).WaitAsync(Guard);

        Task<int[]> all = Task.WhenAll(tasks);
        await FluentActions.Awaiting(() => all.WaitAsync(Guard)).Should().ThrowAsync<Exception>();
        all.IsFaulted.Should().BeTrue("faults win over cancellations in WhenAll");
        Exception[] expected = errors.OrderBy(e => e.Key).Select(e => e.Value).ToArray();
        all.Exception!.InnerExceptions.Should().HaveCount(expected.Length);
        for (int k = 0; k < expected.Length; k++)
        {
            all.Exception.InnerExceptions[k].Should().BeSameAs(expected[k], "WhenAll reports the faults in task order, as the exact instances given");
        }
        for (int i = 0; i < Count; i++)
        {
            switch (i % 3)
            {
                case 0:
                    tasks[i].Result.Should().Be(i);
                    break;
                case 1:
                    tasks[i].Exception!.InnerException.Should().BeSameAs(errors[i]);
                    break;
                default:
                    tasks[i].IsCanceled.Should().BeTrue();
                    break;
            }
        }
    }

    [Fact]
    public async Task A_cancellation_registration_racing_the_producer_yields_exactly_the_winners_outcome()
    {
        int producerWins = 0;
        int cancelWins = 0;
        for (int i = 0; i < 2000; i++)
        {
            var op = RecipeOp<CancelRaceTag>.Rent();
            short version = op.Version;
            using var cts = new CancellationTokenSource();
            CancellationToken token = cts.Token;
            bool cancelWon = false;
            using (token.UnsafeRegister(_ => cancelWon = op.Cancel(version, token), null))
            {
                using var go = new Barrier(2);
                bool producerWon = false;
                var producer = new Thread(() =>
                {
                    go.SignalAndWait();
                    producerWon = op.Complete(version, i);
                });
                producer.Start();
                go.SignalAndWait();
                cts.Cancel();
                producer.Join();

                (producerWon ^ cancelWon).Should().BeTrue("exactly one of the racing producers wins (iteration {0})", i);
                if (producerWon)
                {
                    producerWins++;
                    (await op.Task.AsTask().WaitAsync(Guard)).Should().Be(i);
                }
                else
                {
                    cancelWins++;
                    var thrown = await FluentActions.Awaiting(async () => await op.Task).Should().ThrowAsync<OperationCanceledException>();
                    thrown.Which.CancellationToken.Should().Be(token);
                }

                op.Complete(version, -1).Should().BeFalse();
                op.Cancel(version, token).Should().BeFalse();
            }
        }

        (producerWins + cancelWins).Should().Be(2000);
    }

    [Fact]
    public async Task Parallel_ForEachAsync_over_recipe_operations_never_hands_one_object_to_two_bodies()
    {
        long sum = 0;
        await Parallel.ForEachAsync(Enumerable.Range(0, 4000), new ParallelOptions { MaxDegreeOfParallelism = 8 }, async (i, ct) =>
        {
            var op = RecipeOp<ForEachTag>.Rent();
            short version = op.Version;
            switch (i % 3)
            {
                case 0:
                    op.Complete(version, i).Should().BeTrue();
                    break;
                case 1:
                    ThreadPool.UnsafeQueueUserWorkItem(_ => op.Complete(version, i), null);
                    break;
                default:
                    _ = Task.Run(async () =>
                    {
                        await Task.Yield();
                        op.Complete(version, i);
                    }, CancellationToken.None);
                    break;
            }

            int value = await op.Task;
            value.Should().Be(i);
            Interlocked.Add(ref sum, value);
        }).WaitAsync(TimeSpan.FromSeconds(20));

        sum.Should().Be(Enumerable.Range(0, 4000).Sum(i => (long)i));
        RecipeOp<ForEachTag>.DoubleOwners.Should().Be(0, "a pooled object must never be rented while another renter holds it");
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task Await_foreach_over_a_waker_backed_enumerator_gets_every_item_in_order(bool configureAwaitFalse)
    {
        const int Count = 5000;
        var channel = new WakerChannel();
        var producer = new Thread(() =>
        {
            for (int i = 0; i < Count; i++)
            {
                channel.Write(i);
                if (i % 64 == 0)
                {
                    Thread.Yield();
                }
            }

            channel.Complete();
        });
        producer.Start();

        var received = new List<int>(Count);
        async Task ConsumeAsync()
        {
            if (configureAwaitFalse)
            {
                await foreach (int item in ((IAsyncEnumerable<int>)channel).ConfigureAwait(false))
                {
                    received.Add(item);
                }
            }
            else
            {
                await foreach (int item in channel)
                {
                    received.Add(item);
                }
            }
        }

        await Task.Run(ConsumeAsync).WaitAsync(TimeSpan.FromSeconds(20));
        producer.Join();
        received.Should().Equal(Enumerable.Range(0, Count));
        RecipeOp<EnumTag>.DoubleOwners.Should().Be(0);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task Under_an_exclusive_scheduler_continuations_run_on_it_and_never_concurrently(bool overWorkStealing)
    {
        using var workStealing = overWorkStealing ? SchedulerTestHelpers.Create(2) : null;
        var pair = new ConcurrentExclusiveSchedulerPair(workStealing ?? TaskScheduler.Default, maxConcurrencyLevel: 4);
        int inside = 0;
        int overlaps = 0;
        int wrongScheduler = 0;
        const int Count = 300;
        var ops = new ConcurrentQueue<(RecipeOp<ExclusiveTag> Op, short Version, int Value)>();
        using var registered = new CountdownEvent(Count);

        async Task<int> AwaitOne(int value)
        {
            var op = RecipeOp<ExclusiveTag>.Rent();
            short version = op.Version;
            ops.Enqueue((op, version, value));
            registered.Signal();
            int result = await op.Task;
            if (TaskScheduler.Current != pair.ExclusiveScheduler)
            {
                Interlocked.Increment(ref wrongScheduler);
            }

            if (Interlocked.Increment(ref inside) != 1)
            {
                Interlocked.Increment(ref overlaps);
            }

            Thread.SpinWait(200);
            Interlocked.Decrement(ref inside);
            return result;
        }

        var tasks = Enumerable.Range(0, Count)
            .Select(i => Task.Factory.StartNew(() => AwaitOne(i), CancellationToken.None, TaskCreationOptions.None, pair.ExclusiveScheduler).Unwrap())
            .ToArray();

        // Concurrent-side tasks of the same pair that must never overlap an exclusive continuation.
        var concurrent = Enumerable.Range(0, 50).Select(_ => Task.Factory.StartNew(() =>
        {
            // Concurrent tasks may overlap each other; the exclusive side counts any overlap with them.
            Interlocked.Increment(ref inside);
            Thread.SpinWait(100);
            Interlocked.Decrement(ref inside);
        }, CancellationToken.None, TaskCreationOptions.None, pair.ConcurrentScheduler)).ToArray();

        registered.Wait(Guard).Should().BeTrue();
        var completers = Enumerable.Range(0, 2).Select(_ => new Thread(() =>
        {
            while (ops.TryDequeue(out var entry))
            {
                entry.Op.Complete(entry.Version, entry.Value).Should().BeTrue();
            }
        })).ToList();
        completers.ForEach(t => t.Start());
        completers.ForEach(t => t.Join());

        int[] results = await Task.WhenAll(tasks).WaitAsync(TimeSpan.FromSeconds(20));
        await Task.WhenAll(concurrent).WaitAsync(Guard);
        results.Should().Equal(Enumerable.Range(0, Count));
        wrongScheduler.Should().Be(0, "the continuation runs as a task on the awaiting TaskScheduler (docs: 'a task started on that scheduler')");
        overlaps.Should().Be(0, "the exclusive scheduler runs one task at a time, continuations included");
        pair.Complete();
        await pair.Completion.WaitAsync(Guard);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task Under_UseSynchronizationContext_a_recipe_continuation_returns_to_a_worker(bool configureAwaitFalse)
    {
        using var scheduler = new WorkStealingTaskScheduler(new WorkStealingTaskSchedulerOptions
        {
            WorkerCount = 2,
            SpinIterations = 30,
            ThreadNamePrefix = "AdvAuthor",
            UseSynchronizationContext = true,
        });
        int offWorker = 0;
        var handOff = new BlockingCollection<(RecipeOp<SyncContextTag>, short, int)>();
        var completer = new Thread(() =>
        {
            foreach (var (op, version, value) in handOff.GetConsumingEnumerable())
            {
                op.Complete(version, value);
            }
        });
        completer.Start();

        async Task<int> Body(int i)
        {
            int total = 0;
            for (int k = 0; k < 20; k++)
            {
                var op = RecipeOp<SyncContextTag>.Rent();
                handOff.Add((op, op.Version, i + k));
                total += configureAwaitFalse ? await op.Task.ConfigureAwait(false) : await op.Task;
                if (!scheduler.IsWorkerThread)
                {
                    Interlocked.Increment(ref offWorker);
                }
            }

            return total;
        }

        var tasks = Enumerable.Range(0, 20).Select(i => scheduler.Factory.StartNew(() => Body(i)).Unwrap()).ToArray();
        int[] totals = await Task.WhenAll(tasks).WaitAsync(TimeSpan.FromSeconds(20));
        handOff.CompleteAdding();
        completer.Join();
        totals.Should().Equal(Enumerable.Range(0, 20).Select(i => Enumerable.Range(i, 20).Sum()));
        offWorker.Should().Be(0, "docs: awaited on a worker, with or without UseSynchronizationContext or ConfigureAwait(false), the continuation is queued to a worker");
    }

    [Fact]
    public async Task A_recipe_operation_completed_from_a_finalizer_resumes_its_awaiter_off_the_finalizer_thread()
    {
        var op = RecipeOp<FinalizerTag>.Rent();
        short version = op.Version;
        ValueTask<int> pending = op.Task;
        var completedOn = new TaskCompletionSource<Thread>(TaskCreationOptions.RunContinuationsAsynchronously);
        Task<int> awaited = AwaitAndRecord(pending);
        CreateFinalizable(op, version, completedOn);

        Thread finalizerThread = await WaitForFinalizer(completedOn.Task);
        (await awaited.WaitAsync(Guard)).Should().Be(77);
        s_resumedOn.Should().NotBeSameAs(finalizerThread, "a continuation never runs inline on the completing thread");
        op.Complete(version, 1).Should().BeFalse();

        static async Task<int> AwaitAndRecord(ValueTask<int> task)
        {
            int value = await task;
            s_resumedOn = Thread.CurrentThread;
            return value;
        }
    }

    private static Thread? s_resumedOn;

    [MethodImpl(MethodImplOptions.NoInlining)]
    private static void CreateFinalizable(RecipeOp<FinalizerTag> op, short version, TaskCompletionSource<Thread> completedOn) =>
        _ = new CompletesInFinalizer(op, version, completedOn);

    private static async Task<Thread> WaitForFinalizer(Task<Thread> finalized)
    {
        var deadline = DateTime.UtcNow + Guard;
        while (!finalized.IsCompleted && DateTime.UtcNow < deadline)
        {
            GC.Collect();
            GC.WaitForPendingFinalizers();
            await Task.Delay(10);
        }

        return await finalized.WaitAsync(Guard);
    }

    [Fact]
    public async Task Recipe_operations_completed_from_timer_wheel_callbacks_and_DelayAsync_continuations_resume_correctly()
    {
        using var wheel = new TimerWheel();
        const int Count = 200;
        var ops = new RecipeOp<TimerTag>[Count];
        var versions = new short[Count];
        var timers = new List<ITimer>();
        var tasks = new Task<int>[Count];
        for (int i = 0; i < Count; i++)
        {
            ops[i] = RecipeOp<TimerTag>.Rent();
            versions[i] = ops[i].Version;
            tasks[i] = ops[i].Task.AsTask();
            int index = i;
            if (i % 2 == 0)
            {
                timers.Add(wheel.CreateTimer(_ => ops[index].Complete(versions[index], index), null, TimeSpan.FromMilliseconds(1 + (i % 7)), Timeout.InfiniteTimeSpan));
            }
            else
            {
                _ = CompleteAfterDelay(wheel, ops[index], versions[index], index);
            }
        }

        int[] results = await Task.WhenAll(tasks).WaitAsync(TimeSpan.FromSeconds(20));
        results.Should().Equal(Enumerable.Range(0, Count));
        timers.ForEach(t => t.Dispose());

        static async Task CompleteAfterDelay(TimerWheel wheel, RecipeOp<TimerTag> op, short version, int value)
        {
            await wheel.DelayAsync(TimeSpan.FromMilliseconds(1 + (value % 5)));
            op.Complete(version, value).Should().BeTrue();
        }
    }

    [Fact]
    public void Tokens_across_the_version_wrap_are_stale_until_exactly_65536_reuses_as_documented()
    {
        var waker = new TestWaker<int>();
        ref WakerCore<int> core = ref waker.Core;
        short old = core.Version;
        for (int i = 1; i < 65536; i++)
        {
            core.TrySetResult(core.Version, i).Should().BeTrue();
            core.GetResult(core.Version).Should().Be(i);
            core.TryReset(core.Version).Should().BeTrue();
            if (i % 4096 == 1 || i == 65535)
            {
                core.Version.Should().NotBe(old);
                waker.GetStatus(old).Should().Be(ValueTaskSourceStatus.Faulted, "a stale token reports a fault, never throws");
                FluentActions.Invoking(() => waker.GetResult(old)).Should().Throw<InvalidOperationException>();
                core.TryReset(old).Should().BeFalse();
                core.TrySetResult(old, -1).Should().BeFalse("a token of an earlier reuse must not complete the current one");
                core.TrySetCanceled(old).Should().BeFalse();
                core.TrySetException(old, new InvalidDataException()).Should().BeFalse();
                waker.GetStatus(core.Version).Should().Be(ValueTaskSourceStatus.Pending, "stale calls leave the current operation alone");
            }
        }

        // One more reuse: the documented wrap.
        core.TrySetResult(core.Version, 0).Should().BeTrue();
        core.GetResult(core.Version).Should().Be(0);
        core.TryReset(core.Version).Should().BeTrue();
        core.Version.Should().Be(old, "the version is a 16-bit counter and wraps after 65,536 resets");
        waker.GetStatus(old).Should().Be(ValueTaskSourceStatus.Pending);
    }

    [Theory]
    [InlineData(-1)]
    [InlineData(int.MinValue)]
    public void A_pool_rejects_a_negative_capacity_and_a_null_factory(int capacity)
    {
        FluentActions.Invoking(() => new ValueTaskSourcePool<object>(() => new object(), capacity)).Should().Throw<ArgumentOutOfRangeException>();
        FluentActions.Invoking(() => new ValueTaskSourcePool<object>(null!, 4)).Should().Throw<ArgumentNullException>();
    }

    [Fact]
    public void A_pool_of_capacity_zero_retains_nothing_even_on_a_thread_that_has_thread_caches()
    {
        // Give this thread a thread-cache id through another pool first.
        var other = new ValueTaskSourcePool<object>(() => new object(), 4);
        other.Return(other.Rent());

        int created = 0;
        var pool = new ValueTaskSourcePool<object>(() => { Interlocked.Increment(ref created); return new object(); }, 0);
        pool.Capacity.Should().Be(0);
        for (int i = 0; i < 50; i++)
        {
            object item = pool.Rent();
            pool.Return(item).Should().BeFalse("docs: 0 retains none");
            pool.Count.Should().Be(0);
        }

        created.Should().Be(50, "with nothing retained every Rent calls the factory");
        FluentActions.Invoking(() => pool.Return(null!)).Should().Throw<ArgumentNullException>();

        var nullFactory = new ValueTaskSourcePool<object>(() => null!, 2);
        FluentActions.Invoking(() => nullFactory.Rent()).Should().Throw<InvalidOperationException>();
    }

    [Fact]
    public void A_pool_of_huge_capacity_keeps_and_hands_back_every_object_once()
    {
        var pool = new ValueTaskSourcePool<object>(() => new object(), int.MaxValue);
        var objects = Enumerable.Range(0, 5000).Select(_ => new object()).ToList();
        foreach (object o in objects)
        {
            pool.Return(o).Should().BeTrue("a pool with room keeps what it is given");
        }

        pool.Count.Should().BeInRange(objects.Count - 1, objects.Count);
        var rented = new HashSet<object>(ReferenceEqualityComparer.Instance);
        for (int i = 0; i < objects.Count; i++)
        {
            rented.Add(pool.Rent()).Should().BeTrue("no object is handed out twice");
        }

        rented.SetEquals(objects).Should().BeTrue("every returned object comes back before the factory is called");
        pool.Count.Should().Be(0);
    }

    [Fact]
    public void A_small_pool_filled_from_one_thread_never_keeps_more_than_capacity_plus_the_thread_cache()
    {
        foreach (int capacity in new[] { 1, 2, 3, 5, 17 })
        {
            var pool = new ValueTaskSourcePool<object>(() => new object(), capacity);
            int kept = 0;
            for (int i = 0; i < 100; i++)
            {
                if (pool.Return(new object()))
                {
                    kept++;
                }

                pool.Count.Should().BeLessThanOrEqualTo(capacity);
            }

            kept.Should().BeLessThanOrEqualTo(capacity + 1, "capacity {0}: shared storage plus one thread-cached object", capacity);
            kept.Should().BeGreaterThanOrEqualTo(capacity, "capacity {0}: a pool with room keeps what it is given", capacity);
        }
    }

    [Fact]
    public void Thousands_of_short_lived_threads_each_renting_once_never_share_an_object()
    {
        int created = 0;
        var pool = new ValueTaskSourcePool<Owned>(() => { Interlocked.Increment(ref created); return new Owned(); }, 16);
        int doubleOwners = 0;
        int failures = 0;
        for (int batch = 0; batch < 30; batch++)
        {
            var threads = new Thread[100];
            for (int t = 0; t < threads.Length; t++)
            {
                threads[t] = new Thread(() =>
                {
                    try
                    {
                        Owned item = pool.Rent();
                        if (Interlocked.Exchange(ref item.InUse, 1) != 0)
                        {
                            Interlocked.Increment(ref doubleOwners);
                        }

                        Thread.Yield();
                        Volatile.Write(ref item.InUse, 0);
                        pool.Return(item);
                    }
                    catch
                    {
                        Interlocked.Increment(ref failures);
                        throw;
                    }
                });
                threads[t].Start();
            }

            foreach (Thread thread in threads)
            {
                thread.Join();
            }

            if (batch % 10 == 9)
            {
                GC.Collect();
                GC.WaitForPendingFinalizers();
            }
        }

        failures.Should().Be(0);
        doubleOwners.Should().Be(0);
        pool.Count.Should().BeLessThanOrEqualTo(pool.Capacity);

        // Still usable afterwards, and what it hands out is distinct.
        var now = Enumerable.Range(0, 40).Select(_ => pool.Rent()).ToList();
        now.Distinct().Should().HaveCount(now.Count);
    }

    [Fact]
    public async Task An_authors_Reset_racing_a_registration_throws_conventionally_and_never_runs_a_continuation_twice_or_for_the_next_operation()
    {
        int unexpected = 0;
        for (int i = 0; i < 3000; i++)
        {
            var waker = new TestWaker<int>();
            short token = waker.Version;
            int oldRuns = 0;
            using var go = new Barrier(2);
            Exception? registrationError = null;
            var registrar = new Thread(() =>
            {
                go.SignalAndWait();
                try
                {
                    waker.Core.OnCompleted(_ => Interlocked.Increment(ref oldRuns), null, token, ValueTaskSourceOnCompletedFlags.None);
                }
                catch (Exception e)
                {
                    registrationError = e;
                }
            });
            registrar.Start();
            go.SignalAndWait();
            waker.Core.Reset();
            registrar.Join();
            if (registrationError is not null and not InvalidOperationException)
            {
                Interlocked.Increment(ref unexpected);
            }

            // The next operation, awaited properly, resumes exactly once with its own result.
            short next = waker.Version;
            next.Should().NotBe(token);
            int newRuns = 0;
            var resumed = new TaskCompletionSource<int>(TaskCreationOptions.RunContinuationsAsynchronously);
            waker.Core.OnCompleted(_ =>
            {
                Interlocked.Increment(ref newRuns);
                resumed.TrySetResult(waker.GetResult(next));
            }, null, next, ValueTaskSourceOnCompletedFlags.None);
            waker.Core.TrySetResult(next, i).Should().BeTrue();
            (await resumed.Task.WaitAsync(Guard)).Should().Be(i);
            waker.Core.TryReset(next).Should().BeTrue();

            // Give a stray old continuation a moment to show up (it may legitimately run once, as a losing registration).
            await Task.Yield();
            Volatile.Read(ref oldRuns).Should().BeLessThanOrEqualTo(1, "iteration {0}", i);
            Volatile.Read(ref newRuns).Should().Be(1, "iteration {0}", i);
            waker.Core.HoldsContinuationForTests.Should().BeFalse("iteration {0}: a reset core pins no continuation", i);
        }

        unexpected.Should().Be(0, "misuse surfaces as InvalidOperationException, nothing else");
    }

    [Fact]
    public async Task Completing_after_the_exclusive_pair_completed_does_not_strand_the_awaiter()
    {
        var pair = new ConcurrentExclusiveSchedulerPair();
        var op = RecipeOp<PairDoneTag>.Rent();
        short version = op.Version;
        var registeredOn = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);

        async Task<int> AwaitIt()
        {
            ValueTask<int> pending = op.Task;
            registeredOn.SetResult();
            return await pending;
        }

        Task<int> awaiting = Task.Factory.StartNew(AwaitIt, CancellationToken.None, TaskCreationOptions.None, pair.ExclusiveScheduler).Unwrap();
        await registeredOn.Task.WaitAsync(Guard);
        await Task.Delay(20); // let the await register (GetStatus pending → OnCompleted)
        pair.Complete();
        await pair.Completion.WaitAsync(Guard);

        op.Complete(version, 9).Should().BeTrue();
        (await awaiting.WaitAsync(Guard)).Should().Be(9, "docs: continuations whose TaskScheduler refuses them run on the ThreadPool rather than being lost");
    }

    [Theory]
    [InlineData(false, false)]
    [InlineData(false, true)]
    [InlineData(true, false)]
    [InlineData(true, true)]
    public async Task Recipe_awaiters_on_a_scheduler_disposed_under_them_resume_on_the_ThreadPool(bool useSyncContext, bool completeWhileDisposing)
    {
        var scheduler = new WorkStealingTaskScheduler(new WorkStealingTaskSchedulerOptions
        {
            WorkerCount = 2,
            SpinIterations = 30,
            ThreadNamePrefix = "AdvAuthorDispose",
            UseSynchronizationContext = useSyncContext,
        });
        const int Count = 64;
        var ops = new (RecipeOp<DisposedTag> Op, short Version)[Count];
        using var registered = new CountdownEvent(Count);
        var tasks = new Task<int>[Count];
        for (int i = 0; i < Count; i++)
        {
            int index = i;
            tasks[i] = scheduler.Factory.StartNew(async () =>
            {
                var op = RecipeOp<DisposedTag>.Rent();
                ops[index] = (op, op.Version);
                ValueTask<int> pending = op.Task;
                registered.Signal();
                int value = await pending;
                return value + 1;
            }).Unwrap();
        }

        registered.Wait(Guard).Should().BeTrue();
        await Task.Delay(20);
        Task completer = Task.CompletedTask;
        if (completeWhileDisposing)
        {
            completer = Task.Run(() =>
            {
                for (int i = 0; i < Count; i++)
                {
                    ops[i].Op.Complete(ops[i].Version, i);
                }
            });
        }

        scheduler.Dispose();
        await completer.WaitAsync(Guard);
        if (!completeWhileDisposing)
        {
            for (int i = 0; i < Count; i++)
            {
                ops[i].Op.Complete(ops[i].Version, i).Should().BeTrue();
            }
        }

        int[] results = await Task.WhenAll(tasks).WaitAsync(Guard);
        results.Should().Equal(Enumerable.Range(1, Count), "docs: once the scheduler has shut down, late completions run on the ThreadPool rather than being lost");
    }

    [Fact]
    public async Task The_recipe_with_a_default_core_works_under_racing_producers_and_double_reads()
    {
        for (int i = 0; i < 2000; i++)
        {
            var op = new DetachedOp();
            short version = op.Version;
            ValueTask<int> task = op.Task;
            int wins = 0;
            using var go = new Barrier(3);
            var producers = Enumerable.Range(0, 2).Select(p => new Thread(() =>
            {
                go.SignalAndWait();
                if (op.Complete(version, (i * 2) + p))
                {
                    Interlocked.Increment(ref wins);
                }
            })).ToList();
            producers.ForEach(t => t.Start());
            Task<int> awaited = i % 2 == 0 ? task.AsTask() : AwaitIt(task);
            go.SignalAndWait();
            producers.ForEach(t => t.Join());
            wins.Should().Be(1);
            int value = await awaited.WaitAsync(Guard);
            value.Should().BeInRange(i * 2, (i * 2) + 1);
            op.Resets.Should().Be(1);
            op.Complete(version, -1).Should().BeFalse();
            FluentActions.Invoking(() => op.GetResult(version)).Should().Throw<InvalidOperationException>();
            op.HoldsContinuation.Should().BeFalse("a reset core pins no continuation");
        }

        static async Task<int> AwaitIt(ValueTask<int> task) => await task;
    }

    /// <summary>The recipe without <see cref="IThreadPoolWorkItem"/>: a default core (docs: "still works, but allocates").</summary>
    private sealed class DetachedOp : IValueTaskSource<int>
    {
        private WakerCore<int> _core;
        private int _resets;

        public ValueTask<int> Task => new(this, _core.Version);

        public short Version => _core.Version;

        public int Resets => Volatile.Read(ref _resets);

        public bool HoldsContinuation => _core.HoldsContinuationForTests;

        public bool Complete(short version, int value) => _core.TrySetResult(version, value);

        public ValueTaskSourceStatus GetStatus(short token) => _core.GetStatus(token);

        public void OnCompleted(Action<object?> continuation, object? state, short token, ValueTaskSourceOnCompletedFlags flags) =>
            _core.OnCompleted(continuation, state, token, flags);

        public int GetResult(short token)
        {
            if (_core.GetStatus(token) == ValueTaskSourceStatus.Pending)
            {
                throw new InvalidOperationException("Not completed yet.");
            }

            try
            {
                return _core.GetResult(token);
            }
            finally
            {
                if (_core.TryReset(token))
                {
                    Interlocked.Increment(ref _resets);
                }
            }
        }
    }

    [Fact]
    public void WakerCore_argument_and_state_misuse_throws_the_documented_exceptions_and_leaves_the_core_usable()
    {
        FluentActions.Invoking(() => new WakerCore<int>(null!)).Should().Throw<ArgumentNullException>();
        if (Task.CompletedTask is IThreadPoolWorkItem taskItem)
        {
            FluentActions.Invoking(() => new WakerCore<int>(taskItem)).Should().Throw<ArgumentException>();
        }

        var waker = new TestWaker<int>();
        short v = waker.Version;
        FluentActions.Invoking(() => waker.Core.InvokeContinuation()).Should().Throw<InvalidOperationException>("no continuation is due");
        FluentActions.Invoking(() => waker.Core.OnCompleted(null!, null, v, ValueTaskSourceOnCompletedFlags.None)).Should().Throw<ArgumentNullException>();
        FluentActions.Invoking(() => waker.Core.TrySetException(null!)).Should().Throw<ArgumentNullException>();
        FluentActions.Invoking(() => waker.Core.TrySetException((short)(v + 1), null!)).Should().Throw<ArgumentNullException>();
        FluentActions.Invoking(() => waker.GetResult(v)).Should().Throw<InvalidOperationException>("not completed");
        waker.Core.TryReset(v).Should().BeFalse("a pending operation is not reset");
        waker.GetStatus(v).Should().Be(ValueTaskSourceStatus.Pending);

        waker.Core.SetResult(5);
        FluentActions.Invoking(() => waker.Core.SetResult(6)).Should().Throw<InvalidOperationException>();
        FluentActions.Invoking(() => waker.Core.SetException(new InvalidDataException())).Should().Throw<InvalidOperationException>();
        FluentActions.Invoking(() => waker.Core.SetCanceled()).Should().Throw<InvalidOperationException>();
        FluentActions.Invoking(() => waker.Core.InvokeContinuation()).Should().Throw<InvalidOperationException>("completed, but nothing registered");
        waker.GetStatus(v).Should().Be(ValueTaskSourceStatus.Succeeded);
        waker.GetResult(v).Should().Be(5);
        waker.GetResult(v).Should().Be(5, "GetResult alone does not reset the core");
        waker.Core.TryReset(v).Should().BeTrue();
        waker.Core.TryReset(v).Should().BeFalse();
        FluentActions.Invoking(() => waker.GetResult(v)).Should().Throw<InvalidOperationException>();

        short next = waker.Version;
        next.Should().Be(unchecked((short)(v + 1)));
        waker.Core.TrySetCanceled(next, new CancellationToken(true)).Should().BeTrue();
        waker.GetStatus(next).Should().Be(ValueTaskSourceStatus.Canceled);
        FluentActions.Invoking(() => waker.GetResult(next)).Should().Throw<OperationCanceledException>();
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task Awaited_in_a_LongRunning_task_under_the_scheduler_the_continuation_runs_on_a_worker(bool useSyncContext)
    {
        using var scheduler = new WorkStealingTaskScheduler(new WorkStealingTaskSchedulerOptions
        {
            WorkerCount = 2,
            SpinIterations = 30,
            ThreadNamePrefix = "AdvAuthorLong",
            UseSynchronizationContext = useSyncContext,
        });
        var op = RecipeOp<LongRunningTag>.Rent();
        short version = op.Version;
        var started = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        Task<(bool OnWorkerBefore, bool OnWorkerAfter, int Value)> body = scheduler.Factory.StartNew(
            async () =>
            {
                bool before = scheduler.IsWorkerThread;
                ValueTask<int> pending = op.Task;
                started.SetResult();
                int value = await pending;
                return (before, scheduler.IsWorkerThread, value);
            },
            CancellationToken.None,
            TaskCreationOptions.LongRunning,
            scheduler).Unwrap();
        await started.Task.WaitAsync(Guard);
        // Completed only once the await has suspended: after a real 20-ms pause instead, a LongRunning thread held off its
        // core between started.SetResult and the await found the operation completed and went on synchronously, off
        // every worker, and the last assertion failed.
        SpinWait.SpinUntil(() => op.HoldsContinuation, Guard).Should().BeTrue("the await registers its continuation");
        op.Complete(version, 3).Should().BeTrue();
        var (onWorkerBefore, onWorkerAfter, result) = await body.WaitAsync(Guard);
        result.Should().Be(3);
        onWorkerBefore.Should().BeFalse("a LongRunning task runs on a thread of its own");
        onWorkerAfter.Should().BeTrue("docs: under the scheduler as TaskScheduler.Current but not on a worker, the continuation is queued to the scheduler's global queue");
    }

    [Fact]
    public void Rentals_that_are_never_awaited_or_returned_are_left_to_the_GC()
    {
        var weak = CreateAbandonedRentals(2000);
        var deadline = DateTime.UtcNow + Guard;
        while (weak.Any(w => w.IsAlive) && DateTime.UtcNow < deadline)
        {
            GC.Collect();
            GC.WaitForPendingFinalizers();
            GC.Collect();
        }

        weak.Count(w => w.IsAlive).Should().Be(0, "docs: a rental that is never awaited is left to the GC; nothing global roots it");
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private static List<WeakReference> CreateAbandonedRentals(int count)
    {
        var weak = new List<WeakReference>(count);
        var tasks = new List<Task>();
        for (int i = 0; i < count; i++)
        {
            var op = RecipeOp<AbandonedTag>.Rent();
            short version = op.Version;
            switch (i % 4)
            {
                case 0:
                    break; // never completed
                case 1:
                    op.Complete(version, i); // completed, never read
                    break;
                case 2:
                    // Awaited with a continuation registered, never completed (the awaiter is abandoned too).
                    op.OnCompleted(static _ => { }, null, version, ValueTaskSourceOnCompletedFlags.FlowExecutionContext | ValueTaskSourceOnCompletedFlags.UseSchedulingContext);
                    break;
                default:
                    op.Fail(version, new InvalidDataException()); // faulted, never observed
                    break;
            }

            weak.Add(new WeakReference(op));
        }

        return weak;
    }

    [Fact]
    public void More_threads_at_once_than_thread_cache_ids_still_share_no_object_and_respect_the_capacity()
    {
        const int Threads = 1100;
        var pool = new ValueTaskSourcePool<Owned>(() => new Owned(), 64);
        int doubleOwners = 0;
        int kept = 0;
        using var allRented = new CountdownEvent(Threads);
        using var allReturned = new CountdownEvent(Threads);
        using var release = new ManualResetEventSlim();
        var threads = new Thread[Threads];
        for (int t = 0; t < Threads; t++)
        {
            threads[t] = new Thread(() =>
            {
                Owned item = pool.Rent();
                if (Interlocked.Exchange(ref item.InUse, 1) != 0)
                {
                    Interlocked.Increment(ref doubleOwners);
                }

                allRented.Signal();
                allRented.Wait(TimeSpan.FromSeconds(20));

                // Keep the rented one (so no object cycles between threads) and return a fresh one: every true from
                // Return is then a distinct object the pool holds at once.
                if (pool.Return(new Owned()))
                {
                    Interlocked.Increment(ref kept);
                }

                allReturned.Signal();
                release.Wait(TimeSpan.FromSeconds(20));
            }, 256 * 1024);
            threads[t].Start();
        }

        allReturned.Wait(TimeSpan.FromSeconds(20)).Should().BeTrue();
        pool.Count.Should().BeLessThanOrEqualTo(pool.Capacity);
        kept.Should().BeLessThanOrEqualTo(pool.Capacity + PoolThreadCache.MaxThreads, "shared storage plus one object per thread that got a cache id");
        release.Set();
        foreach (Thread thread in threads)
        {
            thread.Join();
        }

        doubleOwners.Should().Be(0);

        // Everything handed out now is distinct (thread caches of ended threads included, once ids are reused).
        GC.Collect();
        GC.WaitForPendingFinalizers();
        var owners = new ConcurrentBag<Owned>();
        var again = Enumerable.Range(0, 50).Select(_ => new Thread(() =>
        {
            Owned a = pool.Rent();
            Owned b = pool.Rent();
            owners.Add(a);
            owners.Add(b);
        })).ToList();
        again.ForEach(t => t.Start());
        again.ForEach(t => t.Join());
        owners.Distinct().Should().HaveCount(owners.Count);
    }

    /// <summary>Holds an operation and completes it from its finalizer.</summary>
    private sealed class CompletesInFinalizer(RecipeOp<FinalizerTag> op, short version, TaskCompletionSource<Thread> finalized)
    {
        ~CompletesInFinalizer()
        {
            op.Complete(version, 77);
            finalized.TrySetResult(Thread.CurrentThread);
        }
    }

    private sealed class Owned
    {
        public int InUse;
    }

    /// <summary>
    /// The docs/wakers.md recipe, verbatim except that its pool is per <typeparamref name="TTag"/> (one per test) and it
    /// counts returns and double rentals.
    /// </summary>
    private sealed class RecipeOp<TTag> : IValueTaskSource<int>, IThreadPoolWorkItem
    {
        private static readonly ValueTaskSourcePool<RecipeOp<TTag>> s_pool = new(() => new RecipeOp<TTag>(), capacity: 256);
        private static int s_doubleOwners;

        private WakerCore<int> _core;
        private int _rented;
        private long _returns;

        private RecipeOp() => _core = new WakerCore<int>(this);

        public static int DoubleOwners => Volatile.Read(ref s_doubleOwners);

        public long Returns => Volatile.Read(ref _returns);

        public ValueTask<int> Task => new(this, _core.Version);

        public short Version => _core.Version;

        public bool HoldsContinuation => _core.HoldsContinuationForTests;

        public static RecipeOp<TTag> Rent()
        {
            RecipeOp<TTag> op = s_pool.Rent();
            if (Interlocked.Exchange(ref op._rented, 1) != 0)
            {
                Interlocked.Increment(ref s_doubleOwners);
            }

            return op;
        }

        public bool Complete(short version, int bytes) => _core.TrySetResult(version, bytes);

        public bool Fail(short version, Exception error) => _core.TrySetException(version, error);

        public bool Cancel(short version, CancellationToken token) => _core.TrySetCanceled(version, token);

        public ValueTaskSourceStatus GetStatus(short token) => _core.GetStatus(token);

        public void OnCompleted(Action<object?> continuation, object? state, short token, ValueTaskSourceOnCompletedFlags flags) =>
            _core.OnCompleted(continuation, state, token, flags);

        public int GetResult(short token)
        {
            if (_core.GetStatus(token) == ValueTaskSourceStatus.Pending)
            {
                throw new InvalidOperationException("Not completed yet.");
            }

            try
            {
                return _core.GetResult(token);
            }
            finally
            {
                if (_core.TryReset(token))
                {
                    Interlocked.Increment(ref _returns);
                    Volatile.Write(ref _rented, 0);
                    s_pool.Return(this);
                }
            }
        }

        void IThreadPoolWorkItem.Execute() => _core.InvokeContinuation();
    }

    /// <summary>A single-consumer async enumerable whose MoveNextAsync waits on a recipe operation.</summary>
    private sealed class WakerChannel : IAsyncEnumerable<int>, IAsyncEnumerator<int>
    {
        private readonly Lock _lock = new();
        private readonly Queue<int> _items = new();
        private bool _completed;
        private RecipeOp<EnumTag>? _waiter;
        private short _waiterVersion;

        public int Current { get; private set; }

        public void Write(int item)
        {
            RecipeOp<EnumTag>? waiter;
            short version;
            lock (_lock)
            {
                waiter = _waiter;
                version = _waiterVersion;
                _waiter = null;
                if (waiter is null)
                {
                    _items.Enqueue(item);
                    return;
                }

                Current = item;
            }

            waiter.Complete(version, 1).Should().BeTrue();
        }

        public void Complete()
        {
            RecipeOp<EnumTag>? waiter;
            short version;
            lock (_lock)
            {
                _completed = true;
                waiter = _waiter;
                version = _waiterVersion;
                _waiter = null;
            }

            waiter?.Complete(version, 0).Should().BeTrue();
        }

        public ValueTask<bool> MoveNextAsync()
        {
            lock (_lock)
            {
                if (_items.TryDequeue(out int item))
                {
                    Current = item;
                    return new ValueTask<bool>(true);
                }

                if (_completed)
                {
                    return new ValueTask<bool>(false);
                }

                var op = RecipeOp<EnumTag>.Rent();
                _waiter = op;
                _waiterVersion = op.Version;
                return Map(op.Task);
            }
        }

        private static async ValueTask<bool> Map(ValueTask<int> task) => await task != 0;

        public IAsyncEnumerator<int> GetAsyncEnumerator(CancellationToken cancellationToken = default) => this;

        public ValueTask DisposeAsync() => ValueTask.CompletedTask;
    }
}
