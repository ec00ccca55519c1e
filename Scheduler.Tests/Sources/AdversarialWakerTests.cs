using System.Threading.Tasks.Sources;
using Scheduler.Sources;
using Scheduler.Tests.Scheduling;

namespace Scheduler.Tests.Sources;

/// <summary>
/// Adversarial use of the wakers: every misuse the docs say is caught (sequential and racing double awaits, early
/// reads, stale tokens and stale producers against the next rental), the pool under storms, the documented
/// WakerCore recipe driven from its own continuations, the 16-bit version at its last value, and dispatch targets that
/// refuse. Each test uses result types of its own, so no other test rents from (or returns to) its static pools.
/// </summary>
public sealed class AdversarialWakerTests
{
    private static readonly TimeSpan Guard = TimeSpan.FromSeconds(10);

    [ThreadStatic]
    private static bool t_completing;

    private enum SequentialValue
    {
    }

    private enum RaceValue
    {
    }

    private enum StaleValue
    {
    }

    private enum ProducerRaceValue
    {
    }

    private enum RerentValue
    {
    }

    private enum OutcomeValue
    {
    }

    private enum AsTaskValue
    {
    }

    private enum RefusedValue
    {
    }

    private enum SecondAwaitValue
    {
    }

    private enum EcValue
    {
    }

    [Fact]
    public async Task Awaiting_a_rental_twice_in_sequence_always_throws_and_never_reads_the_next_rental()
    {
        for (int i = 0; i < 2_000; i++)
        {
            PooledValueTaskSource<SequentialValue> source = PooledValueTaskSource<SequentialValue>.Rent();
            ValueTask<SequentialValue> task = source.Task;
            source.TrySetResult(source.Version, (SequentialValue)i).Should().BeTrue();
            (await task).Should().Be((SequentialValue)i);

            // The source is back in the pool (most likely this thread's cache): rent it again, pending.
            PooledValueTaskSource<SequentialValue> next = PooledValueTaskSource<SequentialValue>.Rent();
            ValueTask<SequentialValue> nextTask = next.Task;

            Func<Task> again = async () => await task;
            await again.Should().ThrowAsync<InvalidOperationException>();
            FluentActions.Invoking(() => task.Result).Should().Throw<InvalidOperationException>();
            // A stale token reports a fault (GetStatus never throws: the BCL's AsTask callback calls it outside its
            // try), and every read of it throws.
            task.IsCompleted.Should().BeTrue();
            task.IsFaulted.Should().BeTrue();
            task.AsTask().Exception!.InnerException.Should().BeOfType<InvalidOperationException>();

            // None of that touched the next rental.
            nextTask.IsCompleted.Should().BeFalse();
            next.TrySetResult(next.Version, (SequentialValue)(-i)).Should().BeTrue();
            (await nextTask).Should().Be((SequentialValue)(-i));
        }
    }

    [Fact]
    public void Two_threads_awaiting_one_pending_rental_at_once_exactly_one_read_gets_the_value_and_the_other_throws()
    {
        // Neither registration throws out of OnCompleted (an await's builder would rethrow that on the ThreadPool and the
        // method would never resume): the loser's continuation runs on its own, and its read throws there.
        const int Rounds = 1_000;
        using var barrier = new Barrier(2);
        ValueTask<RaceValue> shared = default;
        var registered = new int[2]; // 1 registered, 2 threw, 3 anything else
        var reads = new int[2]; // 1 the round's value, 2 InvalidOperationException, 3 anything else
        int continuationRuns = 0;
        int currentRound = 0;

        void Register(int which)
        {
            ValueTask<RaceValue> task = shared;
            try
            {
                task.GetAwaiter().UnsafeOnCompleted(() =>
                {
                    try
                    {
                        reads[which] = task.GetAwaiter().GetResult() == (RaceValue)Volatile.Read(ref currentRound) ? 1 : 3;
                    }
                    catch (InvalidOperationException)
                    {
                        reads[which] = 2;
                    }
                    catch (Exception)
                    {
                        reads[which] = 3;
                    }

                    Interlocked.Increment(ref continuationRuns);
                });
                registered[which] = 1;
            }
            catch (InvalidOperationException)
            {
                registered[which] = 2;
            }
            catch (Exception)
            {
                registered[which] = 3;
            }
        }

        var other = new Thread(() =>
        {
            for (int round = 0; round < Rounds; round++)
            {
                if (!barrier.SignalAndWait(Guard))
                {
                    return;
                }

                Register(1);
                barrier.SignalAndWait(Guard);
            }
        })
        { IsBackground = true };
        other.Start();

        for (int round = 0; round < Rounds; round++)
        {
            PooledValueTaskSource<RaceValue> source = PooledValueTaskSource<RaceValue>.Rent();
            short version = source.Version;
            shared = source.Task;
            registered[0] = registered[1] = 0;
            reads[0] = reads[1] = 0;
            Volatile.Write(ref continuationRuns, 0);
            Volatile.Write(ref currentRound, round);

            barrier.SignalAndWait(Guard).Should().BeTrue();
            Register(0);
            barrier.SignalAndWait(Guard).Should().BeTrue();

            registered.Should().Equal([1, 1], "round {0}: neither registration throws", round);
            source.TrySetResult(version, (RaceValue)round).Should().BeTrue();
            SpinWait.SpinUntil(() => Volatile.Read(ref continuationRuns) >= 2, Guard).Should().BeTrue("round {0}: both continuations run", round);
            reads.Order().Should().Equal([1, 2], "round {0}: exactly one read gets the value, the other throws InvalidOperationException", round);
        }

        other.Join(Guard).Should().BeTrue();
    }

    [Fact]
    public async Task Reading_the_result_early_throws_and_leaves_both_kinds_of_rental_usable()
    {
        PooledValueTaskSource<int> source = PooledValueTaskSource<int>.Rent();
        short version = source.Version;
        ValueTask<int> task = source.Task;
        FluentActions.Invoking(() => task.Result).Should().Throw<InvalidOperationException>();
        FluentActions.Invoking(() => task.GetAwaiter().GetResult()).Should().Throw<InvalidOperationException>();
        FluentActions.Invoking(() => ((IValueTaskSource)source).GetResult(version)).Should().Throw<InvalidOperationException>();
        task.IsCompleted.Should().BeFalse();
        source.Version.Should().Be(version);
        source.TrySetResult(version, 5).Should().BeTrue();
        (await task.AsTask().WaitAsync(Guard)).Should().Be(5);

        PooledValueTaskSource plain = PooledValueTaskSource.Rent();
        short plainVersion = plain.Version;
        ValueTask plainTask = plain.Task;
        FluentActions.Invoking(() => plainTask.GetAwaiter().GetResult()).Should().Throw<InvalidOperationException>();
        plainTask.IsCompleted.Should().BeFalse();
        plain.Version.Should().Be(plainVersion);
        var completer = new Thread(() => plain.TrySetResult(plainVersion));
        Task awaited = plainTask.AsTask();
        completer.Start();
        await awaited.WaitAsync(Guard);
        completer.Join();
    }

    [Fact]
    public async Task Stale_tokens_after_the_source_was_pooled_and_rented_again_throw_and_leave_the_new_rental_alone()
    {
        PooledValueTaskSource<RerentValue> first = PooledValueTaskSource<RerentValue>.Rent();
        short oldVersion = first.Version;
        ValueTask<RerentValue> oldTask = first.Task;
        first.TrySetResult(oldVersion, (RerentValue)1).Should().BeTrue();
        (await oldTask).Should().Be((RerentValue)1);

        PooledValueTaskSource<RerentValue> second = PooledValueTaskSource<RerentValue>.Rent();
        second.Should().BeSameAs(first, "the only source of this type went back to this thread's cache");
        short newVersion = second.Version;
        newVersion.Should().NotBe(oldVersion);
        ValueTask<RerentValue> newTask = second.Task;

        IValueTaskSource<RerentValue> raw = second;
        raw.GetStatus(oldVersion).Should().Be(ValueTaskSourceStatus.Faulted, "a stale token reports a fault rather than throwing");
        FluentActions.Invoking(() => raw.GetResult(oldVersion)).Should().Throw<InvalidOperationException>();

        // A stale registration does not throw out of OnCompleted (an await's builder would rethrow that on the
        // ThreadPool): its continuation runs on its own, at once, and its read throws there.
        var staleReads = new[] { new TaskCompletionSource<Exception?>(), new TaskCompletionSource<Exception?>() };
        void ReadStale(TaskCompletionSource<Exception?> done, Func<RerentValue> read)
        {
            try
            {
                read();
                done.SetResult(null);
            }
            catch (Exception e)
            {
                done.SetResult(e);
            }
        }

        FluentActions.Invoking(() => raw.OnCompleted(_ => ReadStale(staleReads[0], () => raw.GetResult(oldVersion)), null, oldVersion, ValueTaskSourceOnCompletedFlags.None))
            .Should().NotThrow();
        FluentActions.Invoking(() => oldTask.GetAwaiter().OnCompleted(() => ReadStale(staleReads[1], () => oldTask.GetAwaiter().GetResult()))).Should().NotThrow();
        foreach (TaskCompletionSource<Exception?> read in staleReads)
        {
            (await read.Task.WaitAsync(Guard)).Should().BeOfType<InvalidOperationException>();
        }

        FluentActions.Invoking(() => raw.GetResult(oldVersion)).Should().Throw<InvalidOperationException>();
        second.TrySetResult(oldVersion, (RerentValue)99).Should().BeFalse();
        second.TrySetException(oldVersion, new InvalidTimeZoneException()).Should().BeFalse();
        second.TrySetCanceled(oldVersion).Should().BeFalse();

        // The new rental is still pending, holds no stray continuation, and accepts its own registration and outcome.
        raw.GetStatus(newVersion).Should().Be(ValueTaskSourceStatus.Pending);
        second.HoldsContinuationForTests.Should().BeFalse();
        Task<RerentValue> pending = newTask.AsTask();
        second.TrySetResult(newVersion, (RerentValue)2).Should().BeTrue();
        (await pending.WaitAsync(Guard)).Should().Be((RerentValue)2);
    }

    [Fact]
    public void A_stale_producer_hammering_the_previous_version_never_completes_the_next_rental()
    {
        const int Rounds = 20_000;
        StaleTarget? target = null;
        bool stop = false;
        int staleWins = 0;

        var producer = new Thread(() =>
        {
            int i = 0;
            while (!Volatile.Read(ref stop))
            {
                if (Volatile.Read(ref target) is not { Source: var source, Version: var version })
                {
                    continue;
                }

                bool won = (i++ % 3) switch
                {
                    0 => source.TrySetResult(version, (StaleValue)(-1)),
                    1 => source.TrySetException(version, new InvalidTimeZoneException()),
                    _ => source.TrySetCanceled(version),
                };
                if (won)
                {
                    Interlocked.Increment(ref staleWins);
                }
            }
        })
        { IsBackground = true };
        producer.Start();

        try
        {
            for (int round = 0; round < Rounds; round++)
            {
                PooledValueTaskSource<StaleValue> source = PooledValueTaskSource<StaleValue>.Rent();
                short version = source.Version;

                // Hand the stale producer the version this object had one use ago (wrap-safe: far from 65,536 uses).
                Volatile.Write(ref target, new StaleTarget(source, (short)(version - 1)));
                Thread.SpinWait(20);

                source.TrySetResult(version, (StaleValue)round).Should().BeTrue("round {0}: no stale producer may complete this rental", round);
                source.Task.Result.Should().Be((StaleValue)round);
            }
        }
        finally
        {
            Volatile.Write(ref stop, true);
            producer.Join(Guard);
        }

        Volatile.Read(ref staleWins).Should().Be(0);
    }

    [Fact]
    public async Task Producers_racing_with_the_current_version_complete_each_rental_exactly_once_with_the_winner_outcome()
    {
        const int Rounds = 3_000;
        using var barrier = new Barrier(3);
        PooledValueTaskSource<ProducerRaceValue>? current = null;
        short currentVersion = 0;
        var won = new bool[2];
        var error = new InvalidTimeZoneException();

        Thread Producer(int which) => new(() =>
        {
            for (int round = 0; round < Rounds; round++)
            {
                if (!barrier.SignalAndWait(Guard))
                {
                    return;
                }

                PooledValueTaskSource<ProducerRaceValue> source = Volatile.Read(ref current)!;
                short version = Volatile.Read(ref currentVersion);
                won[which] = which == 0 ? source.TrySetResult(version, (ProducerRaceValue)round) : source.TrySetException(version, error);
                barrier.SignalAndWait(Guard);
            }
        })
        { IsBackground = true };

        Thread[] producers = [Producer(0), Producer(1)];
        foreach (Thread thread in producers)
        {
            thread.Start();
        }

        for (int round = 0; round < Rounds; round++)
        {
            PooledValueTaskSource<ProducerRaceValue> source = PooledValueTaskSource<ProducerRaceValue>.Rent();
            short version = source.Version;
            ValueTask<ProducerRaceValue> task = source.Task;
            Task<ProducerRaceValue>? awaited = round % 2 == 0 ? task.AsTask() : null; // half the rounds have a registered continuation
            Volatile.Write(ref current, source);
            Volatile.Write(ref currentVersion, version);
            won[0] = won[1] = false;

            barrier.SignalAndWait(Guard).Should().BeTrue();
            barrier.SignalAndWait(Guard).Should().BeTrue();

            (won[0] ^ won[1]).Should().BeTrue("round {0}: exactly one producer wins", round);
            awaited ??= task.AsTask();
            if (won[0])
            {
                (await awaited.WaitAsync(Guard)).Should().Be((ProducerRaceValue)round);
            }
            else
            {
                Func<Task> read = () => awaited.WaitAsync(Guard);
                (await read.Should().ThrowAsync<InvalidTimeZoneException>()).Which.Should().BeSameAs(error);
            }
        }

        foreach (Thread thread in producers)
        {
            thread.Join(Guard).Should().BeTrue();
        }
    }

    [Fact]
    public async Task An_OperationCanceledException_given_to_TrySetException_reports_Canceled_and_rethrows_that_instance_other_exceptions_Faulted()
    {
        // Like ManualResetValueTaskSourceCore: an OperationCanceledException (or a subclass) means Canceled.
        var cancellation = new TaskCanceledException("cancelled by the producer");
        PooledValueTaskSource<OutcomeValue> canceled = PooledValueTaskSource<OutcomeValue>.Rent();
        canceled.TrySetException(canceled.Version, cancellation).Should().BeTrue();
        ValueTask<OutcomeValue> canceledTask = canceled.Task;
        canceledTask.IsCanceled.Should().BeTrue();
        canceledTask.IsFaulted.Should().BeFalse();
        Func<Task> awaitCanceled = async () => await canceledTask;
        (await awaitCanceled.Should().ThrowAsync<TaskCanceledException>()).Which.Should().BeSameAs(cancellation);

        var failure = new InvalidTimeZoneException();
        PooledValueTaskSource<OutcomeValue> faulted = PooledValueTaskSource<OutcomeValue>.Rent();
        faulted.TrySetException(faulted.Version, failure).Should().BeTrue();
        ValueTask<OutcomeValue> faultedTask = faulted.Task;
        faultedTask.IsFaulted.Should().BeTrue();
        faultedTask.IsCanceled.Should().BeFalse();
        Func<Task> awaitFaulted = async () => await faultedTask;
        (await awaitFaulted.Should().ThrowAsync<InvalidTimeZoneException>()).Which.Should().BeSameAs(failure);

        // Pending when converted: the Task's final state follows the same rule.
        using var cts = new CancellationTokenSource();
        cts.Cancel();
        PooledValueTaskSource<OutcomeValue> viaTask = PooledValueTaskSource<OutcomeValue>.Rent();
        short version = viaTask.Version;
        Task<OutcomeValue> converted = viaTask.Task.AsTask();
        viaTask.TrySetCanceled(version, cts.Token).Should().BeTrue();
        Func<Task> awaitConverted = () => converted.WaitAsync(Guard);
        (await awaitConverted.Should().ThrowAsync<OperationCanceledException>()).Which.CancellationToken.Should().Be(cts.Token);
        converted.IsCanceled.Should().BeTrue();

        PooledValueTaskSource plain = PooledValueTaskSource.Rent();
        plain.TrySetException(plain.Version, new OperationCanceledException()).Should().BeTrue();
        ValueTask plainTask = plain.Task;
        plainTask.IsCanceled.Should().BeTrue();
        Func<Task> awaitPlain = async () => await plainTask;
        await awaitPlain.Should().ThrowAsync<OperationCanceledException>();
    }

    [Fact]
    public async Task AsTask_then_awaiting_the_same_ValueTask_faults_that_await_and_the_Task_still_gets_the_result()
    {
        for (int i = 0; i < 200; i++)
        {
            PooledValueTaskSource<AsTaskValue> source = PooledValueTaskSource<AsTaskValue>.Rent();
            short version = source.Version;
            ValueTask<AsTaskValue> task = source.Task;
            Task<AsTaskValue> converted = task.AsTask();

            // Registered by AsTask: a second registration or conversion does not throw out of OnCompleted; it runs on
            // its own and its read throws (an `await` of it is the subject of
            // A_second_await_of_a_pending_rental_in_an_async_method_faults_that_method_instead_of_going_unhandled).
            FluentActions.Invoking(() => task.GetAwaiter().OnCompleted(() => { })).Should().NotThrow();
            Task<AsTaskValue> second = task.AsTask();
            await FluentActions.Awaiting(() => second.WaitAsync(Guard)).Should().ThrowAsync<InvalidOperationException>();

            // Complete from a thread that is not this one, half the time before a third look at the ValueTask.
            var completer = new Thread(() => source.TrySetResult(version, (AsTaskValue)i));
            completer.Start();
            (await converted.WaitAsync(Guard)).Should().Be((AsTaskValue)i);
            completer.Join();

            // Consumed by the Task: the ValueTask is stale now, reported faulted, and reading it throws.
            task.IsFaulted.Should().BeTrue();
            FluentActions.Invoking(() => task.Result).Should().Throw<InvalidOperationException>();
        }
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task A_second_await_of_a_pending_rental_in_an_async_method_faults_that_method_instead_of_going_unhandled(bool firstViaAsTask)
    {
        // docs/wakers.md: "a second await ... throws InvalidOperationException"; of two racing registrations "the loser
        // throws and leaves the winner's continuation alone". An `await` reaches OnCompleted through the async method
        // builder, which cannot hand an exception thrown there to the awaiting method: it rethrows it on the ThreadPool.
        using UnhandledExceptions.Tolerated escaped = UnhandledExceptions.Tolerate(
            static e => e is InvalidOperationException && e.StackTrace?.Contains("WakerCore", StringComparison.Ordinal) == true);

        PooledValueTaskSource<SecondAwaitValue> source = PooledValueTaskSource<SecondAwaitValue>.Rent();
        short version = source.Version;
        ValueTask<SecondAwaitValue> task = source.Task;
        Task<SecondAwaitValue> first = firstViaAsTask ? task.AsTask() : AwaitOnce(task);
        Task<SecondAwaitValue> second = AwaitOnce(task);

        // Wait (bounded) until the second await has an outcome, or its exception went unhandled instead.
        var clock = System.Diagnostics.Stopwatch.StartNew();
        while (!second.IsCompleted && !escaped.Seen && clock.Elapsed < Guard)
        {
            await Task.Delay(5);
        }

        source.TrySetResult(version, (SecondAwaitValue)7).Should().BeTrue();
        (await first.WaitAsync(Guard)).Should().Be((SecondAwaitValue)7, "the first await keeps its continuation");

        // Expected: the second method ends faulted and nothing goes unhandled. Found without a fix: it stays suspended
        // forever (WaitingForActivation) and the InvalidOperationException went unhandled on the ThreadPool.
        new { WentUnhandled = escaped.Seen, SecondAwait = second.Status }.Should().BeEquivalentTo(
            new { WentUnhandled = false, SecondAwait = TaskStatus.Faulted },
            "a second await must throw InvalidOperationException into the awaiting method, not end the process and strand that method");
        second.Exception!.InnerException.Should().BeOfType<InvalidOperationException>();

        static async Task<SecondAwaitValue> AwaitOnce(ValueTask<SecondAwaitValue> task) => await task;
    }

    [Fact]
    public void The_pool_under_a_rent_return_storm_never_has_two_owners_and_keeps_no_more_than_its_capacity_plus_thread_caches()
    {
        const int Threads = 4;
        const int Capacity = 16;
        int created = 0;
        var pool = new ValueTaskSourcePool<Owned>(() =>
        {
            Interlocked.Increment(ref created);
            return new Owned();
        }, Capacity);
        int violations = 0;
        using var start = new ManualResetEventSlim();

        var threads = new Thread[Threads];
        for (int t = 0; t < Threads; t++)
        {
            int seed = t;
            threads[t] = new Thread(() =>
            {
                var random = new Random(seed);
                var held = new List<Owned>();
                start.Wait(Guard);
                for (int i = 0; i < 40_000; i++)
                {
                    if (held.Count == 0 || (held.Count < 64 && random.Next(2) == 0))
                    {
                        Owned item = pool.Rent();
                        if (Interlocked.Exchange(ref item.Owner, seed + 1) != 0)
                        {
                            Interlocked.Increment(ref violations);
                        }

                        held.Add(item);
                    }
                    else
                    {
                        int index = random.Next(held.Count);
                        Owned item = held[index];
                        held[index] = held[^1];
                        held.RemoveAt(held.Count - 1);
                        if (Interlocked.Exchange(ref item.Owner, 0) != seed + 1)
                        {
                            Interlocked.Increment(ref violations);
                        }

                        pool.Return(item);
                    }
                }

                foreach (Owned item in held)
                {
                    Interlocked.Exchange(ref item.Owner, 0);
                    pool.Return(item);
                }
            })
            { IsBackground = true };
            threads[t].Start();
        }

        start.Set();
        foreach (Thread thread in threads)
        {
            thread.Join(TimeSpan.FromSeconds(20)).Should().BeTrue();
        }

        Volatile.Read(ref violations).Should().Be(0, "the pool never hands one object to two renters at once");
        pool.Count.Should().BeLessThanOrEqualTo(Capacity);

        // Everything retained can be rented back out at once without duplicates (shared storage plus this thread's cache).
        var drained = new HashSet<Owned>(ReferenceEqualityComparer.Instance);
        int before = Volatile.Read(ref created);
        for (int i = 0; i < Capacity + 1; i++)
        {
            drained.Add(pool.Rent()).Should().BeTrue("a drained object is handed out once");
        }

        pool.Count.Should().Be(0);
        FluentActions.Invoking(() => pool.Return(null!)).Should().Throw<ArgumentNullException>();
        before.Should().BeGreaterThan(0);
    }

    [Fact]
    public void Objects_left_in_the_thread_caches_of_ended_threads_are_handed_out_once_each()
    {
        var pool = new ValueTaskSourcePool<Owned>(() => new Owned(), capacity: 4);
        var everything = new List<Owned>();

        // Each short-lived thread rents (creating), returns into its own thread cache, and ends with it there.
        for (int round = 0; round < 3; round++)
        {
            var threads = new Thread[8];
            for (int t = 0; t < threads.Length; t++)
            {
                threads[t] = new Thread(() =>
                {
                    Owned a = pool.Rent();
                    Owned b = pool.Rent();
                    lock (everything)
                    {
                        everything.Add(a);
                        everything.Add(b);
                    }

                    pool.Return(a); // the thread cache
                    pool.Return(b); // shared storage
                });
                threads[t].Start();
            }

            foreach (Thread thread in threads)
            {
                thread.Join(Guard).Should().BeTrue();
            }

            GC.Collect();
            GC.WaitForPendingFinalizers();
            GC.Collect();
        }

        // New threads that may inherit the ended threads' ids rent concurrently: no object goes to two of them.
        int violations = 0;
        var renters = new Thread[8];
        for (int t = 0; t < renters.Length; t++)
        {
            int id = t + 1;
            renters[t] = new Thread(() =>
            {
                var mine = new List<Owned>();
                for (int i = 0; i < 8; i++)
                {
                    Owned item = pool.Rent();
                    if (Interlocked.Exchange(ref item.Owner, id) != 0)
                    {
                        Interlocked.Increment(ref violations);
                    }

                    mine.Add(item);
                }
            });
            renters[t].Start();
        }

        foreach (Thread thread in renters)
        {
            thread.Join(Guard).Should().BeTrue();
        }

        Volatile.Read(ref violations).Should().Be(0);
    }

    [Theory]
    [InlineData(false, false)]
    [InlineData(true, false)]
    [InlineData(false, true)]
    [InlineData(true, true)]
    public async Task The_docs_recipe_chained_through_its_own_continuations_never_runs_one_inline(bool completeBeforeRegistering, bool onScheduler)
    {
        const int Hops = 2_000;
        var waker = new TestWaker<int>();
        var done = new TaskCompletionSource<int>(TaskCreationOptions.RunContinuationsAsynchronously);
        int inlined = 0;

        void Next(int value)
        {
            short token = waker.Version;
            ValueTask<int> task = waker.Task;
            t_completing = true;
            try
            {
                if (completeBeforeRegistering)
                {
                    waker.Core.TrySetResult(token, value).Should().BeTrue();
                }

                task.GetAwaiter().UnsafeOnCompleted(() => Continue(task, token));
                if (!completeBeforeRegistering)
                {
                    waker.Core.TrySetResult(token, value).Should().BeTrue();
                }
            }
            finally
            {
                t_completing = false;
            }
        }

        void Continue(ValueTask<int> task, short token)
        {
            try
            {
                if (t_completing)
                {
                    Interlocked.Increment(ref inlined);
                }

                int value = task.GetAwaiter().GetResult();
                waker.Core.TryReset(token).Should().BeTrue();
                if (value == Hops)
                {
                    done.TrySetResult(value);
                    return;
                }

                Next(value + 1);
            }
            catch (Exception e)
            {
                done.TrySetException(e);
            }
        }

        if (onScheduler)
        {
            using var scheduler = SchedulerTestHelpers.Create(2);
            await scheduler.Factory.StartNew(() => Next(1)).WithTimeout(Guard);
            (await done.Task.WithTimeout(Guard)).Should().Be(Hops);
        }
        else
        {
            Next(1);
            (await done.Task.WithTimeout(Guard)).Should().Be(Hops);
        }

        Volatile.Read(ref inlined).Should().Be(0, "a continuation never runs inside the call that completed or registered it");
    }

    [Theory]
    [InlineData(0)]
    [InlineData(1)]
    [InlineData(2)]
    public void Version_minus_one_the_last_before_the_wrap_works_for_every_versioned_TrySet(int kind)
    {
        var waker = new TestWaker<int>();
        for (int i = 0; i < 65_535; i++)
        {
            waker.Core.Reset();
        }

        short last = waker.Version;
        last.Should().Be(-1);
        waker.Core.TrySetResult(0, 1).Should().BeFalse("version 0 is the previous operation's");
        waker.Core.TrySetResult(-2, 1).Should().BeFalse();
        ValueTask<int> task = waker.Task;
        var error = new InvalidTimeZoneException();
        switch (kind)
        {
            case 0:
                waker.Core.TrySetResult(last, 7).Should().BeTrue();
                task.Result.Should().Be(7);
                break;
            case 1:
                waker.Core.TrySetException(last, error).Should().BeTrue();
                task.IsFaulted.Should().BeTrue();
                FluentActions.Invoking(() => task.Result).Should().Throw<InvalidTimeZoneException>().Which.Should().BeSameAs(error);
                break;
            default:
                waker.Core.TrySetCanceled(last).Should().BeTrue();
                task.IsCanceled.Should().BeTrue();
                break;
        }

        waker.Core.TrySetResult(last, 8).Should().BeFalse("the operation is completed already");
        waker.Core.TryReset(last).Should().BeTrue();
        waker.Version.Should().Be(0);
        waker.Core.TrySetResult(last, 9).Should().BeFalse("-1 is stale after the wrap");
        waker.Core.TrySetResult(0, 10).Should().BeTrue();
        waker.Core.GetResult(0).Should().Be(10);
    }

    [Fact]
    public async Task A_context_whose_Post_throws_neither_throws_into_the_completing_thread_nor_strands_the_awaiter()
    {
        for (int i = 0; i < 50; i++)
        {
            PooledValueTaskSource<RefusedValue> source = PooledValueTaskSource<RefusedValue>.Rent();
            short version = source.Version;
            ValueTask<RefusedValue> task = source.Task;
            int runs = 0;
            RefusedValue seen = default;
            using var ran = new ManualResetEventSlim();

            SynchronizationContext? previous = SynchronizationContext.Current;
            var refusing = new RefusingSynchronizationContext();
            SynchronizationContext.SetSynchronizationContext(refusing);
            try
            {
                task.GetAwaiter().OnCompleted(() =>
                {
                    seen = task.GetAwaiter().GetResult();
                    Interlocked.Increment(ref runs);
                    ran.Set();
                });
            }
            finally
            {
                SynchronizationContext.SetSynchronizationContext(previous);
            }

            bool completed = false;
            var completer = new Thread(() => completed = source.TrySetResult(version, (RefusedValue)i));
            completer.Start();
            completer.Join(Guard).Should().BeTrue();
            completed.Should().BeTrue("the refusal must not reach the completing thread");
            ran.Wait(Guard).Should().BeTrue("the refused continuation runs on the ThreadPool instead");
            seen.Should().Be((RefusedValue)i);
            refusing.Attempts.Should().Be(1);
            await Task.Delay(1);
            Volatile.Read(ref runs).Should().Be(1);
        }
    }

    [Fact]
    public async Task A_TaskScheduler_that_refuses_the_continuation_task_does_not_strand_the_awaiter_of_either_kind_of_source()
    {
        var scheduler = new RefusingAfterFirstTaskScheduler();
        PooledValueTaskSource<int> typed = PooledValueTaskSource<int>.Rent();
        PooledValueTaskSource plain = PooledValueTaskSource.Rent();
        short typedVersion = typed.Version;
        short plainVersion = plain.Version;
        ValueTask<int> typedTask = typed.Task;
        ValueTask plainTask = plain.Task;
        using var bothRan = new CountdownEvent(2);
        int typedSeen = 0;

        // Register both continuations from a task running on the scheduler (its only accepted task).
        await Task.Factory.StartNew(
            () =>
            {
                TaskScheduler.Current.Should().BeSameAs(scheduler);
                typedTask.GetAwaiter().OnCompleted(() =>
                {
                    typedSeen = typedTask.GetAwaiter().GetResult();
                    bothRan.Signal();
                });
                plainTask.GetAwaiter().OnCompleted(() =>
                {
                    plainTask.GetAwaiter().GetResult();
                    bothRan.Signal();
                });
            },
            CancellationToken.None,
            TaskCreationOptions.DenyChildAttach,
            scheduler).WaitAsync(Guard);

        typed.TrySetResult(typedVersion, 42).Should().BeTrue();
        plain.TrySetResult(plainVersion).Should().BeTrue();
        bothRan.Wait(Guard).Should().BeTrue("refused continuations fall back to the ThreadPool");
        typedSeen.Should().Be(42);
        scheduler.Refusals.Should().Be(2);
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void Execution_context_flows_only_when_asked_even_into_a_context_callback_run_with_flow_suppressed(bool flow)
    {
        var local = new AsyncLocal<string>();
        var context = new HeldPostsSynchronizationContext();
        PooledValueTaskSource<EcValue> source = PooledValueTaskSource<EcValue>.Rent();
        short version = source.Version;
        ValueTask<EcValue> task = source.Task;
        string? seen = null;
        EcValue value = default;
        int runs = 0;

        void Continuation()
        {
            seen = local.Value;
            value = task.GetAwaiter().GetResult();
            runs++;
        }

        var awaiter = new Thread(() =>
        {
            local.Value = "awaiter";
            SynchronizationContext.SetSynchronizationContext(context);
            if (flow)
            {
                task.GetAwaiter().OnCompleted(Continuation);
            }
            else
            {
                task.GetAwaiter().UnsafeOnCompleted(Continuation);
            }
        });
        awaiter.Start();
        awaiter.Join(Guard).Should().BeTrue();

        source.TrySetResult(version, (EcValue)3).Should().BeTrue();
        context.Held.Should().Be(1, "the continuation is posted to the awaiter's context");

        string? afterwards = null;
        bool stillSuppressed = false;
        var runner = new Thread(() =>
        {
            local.Value = "runner";
            using (ExecutionContext.SuppressFlow())
            {
                context.RunAll();
                stillSuppressed = ExecutionContext.IsFlowSuppressed();
            }

            afterwards = local.Value;
        });
        runner.Start();
        runner.Join(Guard).Should().BeTrue();

        runs.Should().Be(1);
        value.Should().Be((EcValue)3);
        seen.Should().Be(flow ? "awaiter" : "runner");
        stillSuppressed.Should().BeTrue("the runner's suppressed flow is restored after the continuation");
        afterwards.Should().Be("runner", "the awaiter's execution context does not leak into the thread that ran the continuation");
    }

    private sealed record StaleTarget(PooledValueTaskSource<StaleValue> Source, short Version);

    private sealed class Owned
    {
        public int Owner;
    }

    private sealed class RefusedException() : DeliberateTestException("The context refuses every post.");

    /// <summary>A SynchronizationContext whose Post refuses (throws without ever calling back).</summary>
    private sealed class RefusingSynchronizationContext : SynchronizationContext
    {
        private int _attempts;

        public int Attempts => Volatile.Read(ref _attempts);

        public override void Post(SendOrPostCallback d, object? state)
        {
            Interlocked.Increment(ref _attempts);
            throw new RefusedException();
        }

        public override SynchronizationContext CreateCopy() => this;
    }

    /// <summary>Runs its first task on the ThreadPool and refuses every later one (QueueTask throws).</summary>
    private sealed class RefusingAfterFirstTaskScheduler : TaskScheduler
    {
        private int _queued;
        private int _refusals;

        public int Refusals => Volatile.Read(ref _refusals);

        protected override void QueueTask(Task task)
        {
            if (Interlocked.Increment(ref _queued) == 1)
            {
                ThreadPool.UnsafeQueueUserWorkItem(_ => TryExecuteTask(task), null);
                return;
            }

            Interlocked.Increment(ref _refusals);
            throw new RefusedException();
        }

        protected override bool TryExecuteTaskInline(Task task, bool taskWasPreviouslyQueued) => false;

        protected override IEnumerable<Task> GetScheduledTasks() => [];
    }
}
