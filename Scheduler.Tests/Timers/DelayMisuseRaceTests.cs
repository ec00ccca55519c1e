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
        var context = new InlineSynchronizationContext();
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
            SynchronizationContext.SetSynchronizationContext(context);
            try
            {
                // The awaiter registers a shared continuation with the Action as its state: a loser overwriting the
                // winner's state would make the loser's Action run.
                delay.GetAwaiter().UnsafeOnCompleted(continuations[side]);
            }
            catch (InvalidOperationException)
            {
                threw[side] = true;
            }
            finally
            {
                SynchronizationContext.SetSynchronizationContext(null);
            }
        }

        int rounds = TwoThreadRace.Run(
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
                int resumptions = Volatile.Read(ref runs);
                resumptions.Should().Be(1, $"the winner's continuation runs once (round {round})");
                var consume = () => delay.GetAwaiter().GetResult();
                consume.Should().Throw<OperationCanceledException>($"the winner's await observes the cancellation (round {round})");
            });

        output.WriteLine($"{rounds} rounds");
        rounds.Should().BeGreaterThan(100);
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
        var context = new InlineSynchronizationContext();
        ValueTask delay = default;
        var cts = new CancellationTokenSource();
        int runs = 0;
        Action continuation = () => Interlocked.Increment(ref runs);

        int rounds = TwoThreadRace.Run(
            budget: Budget,
            seed: seed,
            prepare: _ =>
            {
                cts = new CancellationTokenSource();
                delay = wheel.DelayAsync(TimeSpan.FromHours(1), cts.Token);
                runs = 0;
            },
            left: _ =>
            {
                SynchronizationContext.SetSynchronizationContext(context);
                try
                {
                    delay.GetAwaiter().UnsafeOnCompleted(continuation);
                }
                finally
                {
                    SynchronizationContext.SetSynchronizationContext(null);
                }
            },
            right: _ => cts.Cancel(),
            check: round =>
            {
                WaitForRun(ref runs, round);
                int resumptions = Volatile.Read(ref runs);
                resumptions.Should().Be(1, $"the continuation runs once (round {round})");
                var consume = () => delay.GetAwaiter().GetResult();
                consume.Should().Throw<OperationCanceledException>($"the await observes the cancellation (round {round})");
            });

        output.WriteLine($"{rounds} rounds");
        rounds.Should().BeGreaterThan(100);
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
