using System.Diagnostics;
using Scheduler.Timers;

using static Scheduler.Tests.Timers.DelayTestHooks;

namespace Scheduler.Tests.Timers;

/// <summary>
/// A pending <see cref="TimerWheel.DelayAsync"/> awaited twice at the same moment (two threads racing the same misuse)
/// must fail loudly for one of them (its continuation runs at once and its read throws) and leave the other's
/// registration intact: its continuation, and only it, runs once when the delay completes, and its await still
/// observes the outcome.
/// </summary>
/// <remarks>Alone: its two spinning threads fill this 2-core machine, which would skew the timing-sensitive tests beside it.</remarks>
[Collection(StressGroup.Name)]
public sealed class DelayMisuseRaceTests(Xunit.Abstractions.ITestOutputHelper output)
{
    private static readonly TimeSpan Budget = TimeSpan.FromMilliseconds(600);

    [Theory]
    [InlineData(0)]
    [InlineData(1)]
    [InlineData(2)]
    public void Racing_double_registration_keeps_the_winner_continuation(int seed)
    {
        using var wheel = new TimerWheel();
        ValueTask delay = default;
        var cts = new CancellationTokenSource();
        var threw = new bool[2];
        var runs = new int[2];
        Action[] continuations = [() => Interlocked.Increment(ref runs[0]), () => Interlocked.Increment(ref runs[1])];

        void Register(int side)
        {
            try
            {
                // The awaiter registers a shared continuation with the Action as its state: a loser overwriting the
                // winner's state would make the loser's Action run when the delay completes.
                AwaitUnderInlineContext(delay, continuations[side]);
            }
            catch (Exception)
            {
                threw[side] = true;
            }
        }

        TwoThreadRace.RunAndCheckRounds(
            output,
            budget: Budget,
            seed: seed,
            prepare: _ =>
            {
                cts = new CancellationTokenSource();
                delay = wheel.DelayAsync(TimeSpan.FromHours(1), cts.Token);
                threw[0] = threw[1] = false;
                runs[0] = runs[1] = 0;
            },
            left: _ => Register(0),
            right: _ => Register(1),
            check: round =>
            {
                // Neither registration throws (an await's builder would rethrow that on the ThreadPool and end the
                // process): the loser's continuation runs at once, on its own, and its read throws there.
                threw.Should().OnlyContain(t => !t, $"a losing registration must not throw out of OnCompleted (round {round})");
                int loser = WaitForEitherRun(runs, round);
                int winner = 1 - loser;
                var loserRead = () => delay.GetAwaiter().GetResult();
                loserRead.Should().Throw<InvalidOperationException>($"the loser reads a delay still pending (round {round})");
                Volatile.Read(ref runs[winner]).Should().Be(0, $"the winner waits for the delay (round {round})");

                cts.Cancel(); // completes inline; the winner's continuation is posted to the inline context
                WaitForRun(ref runs[winner], round);
                Volatile.Read(ref runs[loser]).Should().Be(1, $"the loser must not overwrite the winner's registration (round {round})");
                ExpectOneRunThatObservesTheCancellation(ref runs[winner], delay, round);
            });
    }

    // The plain form of the race above: two async methods awaiting one pending delay. The second's OnCompleted used to
    // throw, which the async method builder rethrows on the ThreadPool: the test process ended (found in session 29).
    [Fact]
    public async Task A_second_await_of_a_pending_delay_in_an_async_method_faults_that_method_and_the_first_resumes()
    {
        // A manual clock and no driver thread: the delay cannot complete before both awaits (with a real 100-ms delay, a
        // test thread held off its core that long let the second await find it completed and consume it).
        var clock = new ManualClock();
        using var wheel = new TimerWheel(TimeSpan.FromMilliseconds(1), clock, startDriver: false);
#pragma warning disable CA2012 // the misuse under test: one ValueTask awaited twice
        ValueTask delay = wheel.DelayAsync(TimeSpan.FromMilliseconds(100));
        Task first = AwaitIt(delay);
        Task second = AwaitIt(delay);
#pragma warning restore CA2012

        Func<Task> secondAwait = () => second.WaitAsync(TimeSpan.FromSeconds(10));
        await secondAwait.Should().ThrowAsync<InvalidOperationException>("the second await fails in its own method")
            .WithMessage(Sources.PooledValueTaskSourceTests.NotCompletedMessage);
        first.IsCompleted.Should().BeFalse("the first await waits for the delay");
        clock.Advance(TimeSpan.FromMilliseconds(101));
        wheel.RunDueTimers();
        await first.WaitAsync(TimeSpan.FromSeconds(10));

        static async Task AwaitIt(ValueTask delay) => await delay;
    }

    // A direct read racing the awaiter's dispatch: the cancellation that completed the delay is still posting the awaiter's
    // continuation (held by the context) when a first read claims the use; that read then waits, in the registration's
    // Dispose, for the cancellation callback to return. A second read meanwhile is refused by name, and the first one
    // gets the outcome once the post is let go. Deterministic: every step waits for the one before it.
    [Fact]
    public async Task A_read_while_another_read_holds_the_delay_is_told_another_consumer_has_it_and_the_holder_gets_the_outcome()
    {
        using var wheel = new TimerWheel();
        using var cts = new CancellationTokenSource();
        using var gate = new Sources.GatedSynchronizationContext();
#pragma warning disable CA2012 // the misuse under test: one ValueTask awaited and read, twice
        ValueTask delay = wheel.DelayAsync(TimeSpan.FromHours(1), cts.Token);
#pragma warning restore CA2012
        var continued = new TaskCompletionSource<Exception?>(TaskCreationOptions.RunContinuationsAsynchronously);
        OnCompletedUnder(gate, delay, () => continued.SetResult(Record.Exception(() => delay.GetAwaiter().GetResult())));

        Task cancel = Task.Factory.StartNew(cts.Cancel, CancellationToken.None, TaskCreationOptions.LongRunning, TaskScheduler.Default);
        gate.WaitUntilHeld(TimeSpan.FromSeconds(10)).Should().BeTrue("the cancellation completes the delay and posts its continuation inline");

        Task<Exception?> holder = Task.Factory.StartNew<Exception?>(
            () => Record.Exception(() => delay.GetAwaiter().GetResult()), CancellationToken.None, TaskCreationOptions.LongRunning, TaskScheduler.Default);
        var clock = Stopwatch.StartNew();
        while (!DelaySlotIsHeldByAConsumer(delay) && clock.Elapsed < TimeSpan.FromSeconds(10))
        {
            Thread.Sleep(1);
        }

        DelaySlotIsHeldByAConsumer(delay).Should().BeTrue("the first read claimed the use and waits for the cancellation callback");
        FluentActions.Invoking(() => delay.GetAwaiter().GetResult()).Should().Throw<InvalidOperationException>()
            .WithMessage("The operation is being awaited or its result read by another consumer at this moment*can be awaited (or its result read) only once.");
        holder.IsCompleted.Should().BeFalse();

        gate.Release();
        (await holder.WaitAsync(TimeSpan.FromSeconds(10))).Should().BeAssignableTo<OperationCanceledException>("the holder gets the outcome: canceled");
        (await continued.Task.WaitAsync(TimeSpan.FromSeconds(10))).Should().BeOfType<InvalidOperationException>("the awaiter's own read comes after the holder consumed the use");
        await cancel.WaitAsync(TimeSpan.FromSeconds(10));
    }

    /// <summary>Waits for one of the two continuations to run and returns which.</summary>
    private static int WaitForEitherRun(int[] runs, int round)
    {
        var clock = Stopwatch.StartNew();
        var spinner = new SpinWait();
        while (true)
        {
            for (int side = 0; side < 2; side++)
            {
                if (Volatile.Read(ref runs[side]) != 0)
                {
                    return side;
                }
            }

            if (clock.Elapsed > TimeSpan.FromSeconds(10))
            {
                throw new TimeoutException($"The losing registration's continuation never ran in round {round}.");
            }

            spinner.SpinOnce(sleep1Threshold: -1);
        }
    }

    [Theory]
    [InlineData(0)]
    [InlineData(1)]
    [InlineData(2)]
    public void Registration_racing_completion_runs_the_continuation_once(int seed)
    {
        // Not misuse: the producer (here a cancellation) completes while the only await registers. Whichever way the
        // race goes (completed before the claim, between claim and publish, or after), the continuation runs once.
        using var wheel = new TimerWheel();
        ValueTask delay = default;
        var cts = new CancellationTokenSource();
        int runs = 0;
        Action continuation = () => Interlocked.Increment(ref runs);

        TwoThreadRace.RunAndCheckRounds(
            output,
            budget: Budget,
            seed: seed,
            prepare: _ =>
            {
                cts = new CancellationTokenSource();
                delay = wheel.DelayAsync(TimeSpan.FromHours(1), cts.Token);
                runs = 0;
            },
            left: _ => AwaitUnderInlineContext(delay, continuation),
            right: _ => cts.Cancel(),
            check: round =>
            {
                WaitForRun(ref runs, round);
                ExpectOneRunThatObservesTheCancellation(ref runs, delay, round);
            });
    }

    // A completed delay: an await registers (its continuation is dispatched at once) while another thread reads the
    // result directly. Whoever loses throws, and nothing of the await lands in the slot after the reader reset it
    // (a late write there would pin the continuation's objects and could tear the slot's next use).
    [Theory]
    [InlineData(0)]
    [InlineData(1)]
    [InlineData(2)]
    public void A_read_racing_a_registration_on_a_completed_delay_leaves_the_slot_clean(int seed)
    {
        using var wheel = new TimerWheel();
        ValueTask delay = default;
        int registration = 0, continuation = 0, reader = 0; // 0 = nothing, 1 = the outcome (canceled), 2 = InvalidOperationException
        int runs = 0;

        TwoThreadRace.RunAndCheckRounds(
            output,
            budget: Budget,
            seed: seed,
            prepare: _ =>
            {
                delay = CanceledDelay(wheel);
                registration = continuation = reader = runs = 0;
            },
            left: _ =>
            {
                try
                {
                    AwaitUnderInlineContext(delay, () =>
                    {
                        Volatile.Write(ref continuation, ReadCanceled(delay));
                        Interlocked.Increment(ref runs);
                    });
                    registration = 1;
                }
                catch (Exception)
                {
                    registration = 2;
                }
            },
            right: _ => reader = ReadCanceled(delay),
            check: round =>
            {
                // The registration never throws (an await's builder would rethrow that on the ThreadPool): a winning one
                // runs its continuation inline, a losing one (the reader consumed the delay first) on its own, at once.
                WaitForRun(ref runs, round);
                string what = $"round {round}: registration {registration}, continuation {continuation} (ran {runs}), reader {reader}";
                registration.Should().Be(1, $"OnCompleted does not throw ({what})");
                (Volatile.Read(ref continuation) == 1 ^ reader == 1).Should().BeTrue($"exactly one of them observes the outcome ({what})");
                Volatile.Read(ref runs).Should().Be(1, $"the continuation runs once ({what})");
                DelaySlotHoldsContinuation(delay).Should().BeFalse($"the reset slot holds nothing of the await ({what})");
            });
    }

    // Two direct reads of one completed delay at once (the ValueTask consumed twice): one observes the outcome, the
    // other throws. They used to clean the slot up side by side before either reset it, and one of them could read
    // the cancellation registration half cleared by the other and wait forever for a callback that had long finished.
    [Theory]
    [InlineData(0)]
    [InlineData(1)]
    public void Racing_double_read_of_a_completed_delay_gives_the_outcome_once(int seed)
    {
        using var wheel = new TimerWheel();
        ValueTask delay = default;
        var outcomes = new int[2]; // 1 = the outcome (canceled), 2 = InvalidOperationException

        TwoThreadRace.RunAndCheckRounds(
            output,
            budget: Budget,
            seed: seed,
            prepare: _ =>
            {
                delay = CanceledDelay(wheel);
                outcomes[0] = outcomes[1] = 0;
            },
            left: _ => outcomes[0] = ReadCanceled(delay),
            right: _ => outcomes[1] = ReadCanceled(delay),
            check: round =>
            {
                outcomes.Order().Should().Equal([1, 2], $"one read observes the cancellation, the other throws (round {round})");
                DelaySlotHoldsContinuation(delay).Should().BeFalse($"the reset slot holds nothing (round {round})");
            });
    }

    // A registered continuation while the delay is canceled on one thread and read directly on another: the
    // cancellation dispatches the continuation (inline here) and must never hand it out half read because the direct
    // reader reset the slot in between.
    [Theory]
    [InlineData(0)]
    [InlineData(1)]
    public void A_read_racing_the_dispatch_of_a_registered_continuation_never_loses_it(int seed)
    {
        using var wheel = new TimerWheel();
        ValueTask delay = default;
        var cts = new CancellationTokenSource();
        int continuation = 0, reader = 0, runs = 0;
        Exception? cancelFailure = null;

        TwoThreadRace.RunAndCheckRounds(
            output,
            budget: Budget,
            seed: seed,
            prepare: _ =>
            {
                cts = new CancellationTokenSource();
                delay = wheel.DelayAsync(TimeSpan.FromHours(1), cts.Token);
                continuation = reader = runs = 0;
                cancelFailure = null;
                AwaitUnderInlineContext(delay, () =>
                {
                    Interlocked.Increment(ref runs);
                    continuation = ReadCanceled(delay);
                });
            },
            left: _ =>
            {
                try
                {
                    cts.Cancel();
                }
                catch (Exception e)
                {
                    cancelFailure = e;
                }
            },
            right: _ => reader = ReadCanceled(delay),
            check: round =>
            {
                WaitForRun(ref runs, round);
                string what = $"round {round}: continuation {continuation} (ran {runs}), reader {reader}, cancel {cancelFailure?.GetType().Name ?? "ok"}";
                cancelFailure.Should().BeNull($"the cancellation's dispatch must not fail ({what})");
                Volatile.Read(ref runs).Should().Be(1, $"the continuation runs once ({what})");
                (continuation == 1 ^ reader == 1).Should().BeTrue($"exactly one of them observes the outcome ({what})");
                DelaySlotHoldsContinuation(delay).Should().BeFalse($"the reset slot holds nothing of the await ({what})");
            });
    }

    private static readonly InlineSynchronizationContext s_inlineContext = new();

    /// <summary>Registers <paramref name="continuation"/> as an await of <paramref name="delay"/> would, under a context that posts inline.</summary>
    private static void AwaitUnderInlineContext(ValueTask delay, Action continuation)
    {
        SynchronizationContext.SetSynchronizationContext(s_inlineContext);
        try
        {
            delay.GetAwaiter().UnsafeOnCompleted(continuation);
        }
        finally
        {
            SynchronizationContext.SetSynchronizationContext(null);
        }
    }

    /// <summary>A delay of the wheel, completed by its cancellation, no continuation registered.</summary>
    private static ValueTask CanceledDelay(TimerWheel wheel)
    {
        using var cts = new CancellationTokenSource();
        ValueTask delay = wheel.DelayAsync(TimeSpan.FromHours(1), cts.Token);
        cts.Cancel();
        return delay;
    }

    /// <summary>Reads a canceled delay's outcome: 1 = the cancellation, 2 = InvalidOperationException (a loser), 3 = anything else.</summary>
    private static int ReadCanceled(ValueTask delay)
    {
        try
        {
            delay.GetAwaiter().GetResult();
            return 3;
        }
        catch (OperationCanceledException)
        {
            return 1;
        }
        catch (InvalidOperationException)
        {
            return 2;
        }
    }

    /// <summary>The (winning) await's continuation ran exactly once, and reading the delay observes its cancellation.</summary>
    private static void ExpectOneRunThatObservesTheCancellation(ref int runs, ValueTask delay, int round)
    {
        Volatile.Read(ref runs).Should().Be(1, $"the continuation runs once (round {round})");
        var consume = () => delay.GetAwaiter().GetResult();
        consume.Should().Throw<OperationCanceledException>($"the await observes the cancellation (round {round})");
    }

    /// <summary>The continuation normally ran inline already; a generous bound covers a dispatch that did not.</summary>
    private static void WaitForRun(ref int runs, int round)
    {
        var clock = Stopwatch.StartNew();
        var spinner = new SpinWait();
        while (Volatile.Read(ref runs) == 0)
        {
            if (clock.Elapsed > TimeSpan.FromSeconds(10))
            {
                throw new TimeoutException($"No continuation ran in round {round}.");
            }

            spinner.SpinOnce(sleep1Threshold: -1);
        }
    }
}
