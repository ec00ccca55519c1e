using System.Diagnostics;
using System.Runtime.CompilerServices;
using Scheduler.Timers;

namespace Scheduler.Tests.Timers;

/// <summary>
/// A pending <see cref="TimerWheel.DelayAsync"/> awaited twice at the same moment (two threads racing the same misuse)
/// must fail loudly for one of them and leave the other's registration intact: its continuation, and only it, runs
/// once when the delay completes, and its await still observes the outcome.
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
        int ran = -1;
        int runs = 0;
        Action[] continuations = [() => Record(0), () => Record(1)];

        void Record(int which)
        {
            Volatile.Write(ref ran, which);
            Interlocked.Increment(ref runs);
        }

        void Register(int side)
        {
            try
            {
                // The awaiter registers a shared continuation with the Action as its state: a loser overwriting the
                // winner's state would make the loser's Action run.
                AwaitUnderInlineContext(delay, continuations[side]);
            }
            catch (InvalidOperationException)
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
                ran = -1;
                runs = 0;
            },
            left: _ => Register(0),
            right: _ => Register(1),
            check: round =>
            {
                threw.Count(t => t).Should().Be(1, $"exactly one of two racing registrations wins (round {round})");
                int winner = threw[0] ? 1 : 0;
                cts.Cancel(); // completes inline; the continuation is posted to the inline context
                WaitForRun(ref runs, round);
                int resumed = Volatile.Read(ref ran);
                resumed.Should().Be(winner, $"the loser must not overwrite the winner's registration (round {round})");
                ExpectOneRunThatObservesTheCancellation(ref runs, delay, round);
            });
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
                        runs++;
                        continuation = ReadCanceled(delay);
                    });
                    registration = 1;
                }
                catch (InvalidOperationException)
                {
                    registration = 2;
                }
            },
            right: _ => reader = ReadCanceled(delay),
            check: round =>
            {
                string what = $"round {round}: registration {registration}, continuation {continuation} (ran {runs}), reader {reader}";
                (continuation == 1 ^ reader == 1).Should().BeTrue($"exactly one of them observes the outcome ({what})");
                runs.Should().Be(registration == 1 ? 1 : 0, $"a continuation runs once if and only if its registration succeeded ({what})");
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

    private static bool DelaySlotHoldsContinuation(ValueTask delay) =>
        ((DelayChunk)ValueTaskSource(ref delay)!).SlotHoldsContinuationForTests(ValueTaskToken(ref delay));

    [UnsafeAccessor(UnsafeAccessorKind.Field, Name = "_obj")]
    private static extern ref object? ValueTaskSource(ref ValueTask task);

    [UnsafeAccessor(UnsafeAccessorKind.Field, Name = "_token")]
    private static extern ref short ValueTaskToken(ref ValueTask task);

    /// <summary>The continuation normally ran inline already; a generous bound covers a dispatch that did not.</summary>
    /// <summary>The (winning) await's continuation ran exactly once, and reading the delay observes its cancellation.</summary>
    private static void ExpectOneRunThatObservesTheCancellation(ref int runs, ValueTask delay, int round)
    {
        Volatile.Read(ref runs).Should().Be(1, $"the continuation runs once (round {round})");
        var consume = () => delay.GetAwaiter().GetResult();
        consume.Should().Throw<OperationCanceledException>($"the await observes the cancellation (round {round})");
    }

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
