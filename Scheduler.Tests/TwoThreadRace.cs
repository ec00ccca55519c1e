using System.Diagnostics;
using Xunit.Abstractions;

namespace Scheduler.Tests;

/// <summary>A race harness for misuse races (two awaits, two reads) of the wakers and of the timers' delays.</summary>
internal static class TwoThreadRace
{
    // However busy the machine: a test asserts it raced more than 100 rounds, so a slow machine runs past the budget
    // until it has (within a hard limit). Under two other processes spinning on both cores, a 600 ms budget saw 66.
    private const int MinimumRounds = 200;
    private static readonly TimeSpan s_hardLimit = TimeSpan.FromSeconds(20);

    /// <summary>
    /// Runs <paramref name="left"/> (on the caller) and <paramref name="right"/> (on a second thread) at once, round
    /// after round for <paramref name="budget"/> (at least 200 rounds, unless 20 s pass; at most 200,000), released together from a spinning start line,
    /// one of them a little later by a skew that sweeps a few hundred nanoseconds (shifted by <paramref name="seed"/>);
    /// <paramref name="check"/> runs on the caller after both finished a round. Returns the number of rounds.
    /// </summary>
    public static int Run(TimeSpan budget, int seed, Action<int> prepare, Action<int> left, Action<int> right, Action<int> check)
    {
        int go = -1;
        int finished = -1;
        bool stop = false;
        Exception? failure = null;

        var thread = new Thread(() =>
        {
            for (int round = 0; ; round++)
            {
                var spinner = new SpinWait();
                while (Volatile.Read(ref go) < round)
                {
                    if (Volatile.Read(ref stop))
                    {
                        return;
                    }

                    spinner.SpinOnce(sleep1Threshold: -1);
                }

                try
                {
                    Skew(seed, round, 1);
                    right(round);
                }
                catch (Exception e)
                {
                    Interlocked.CompareExchange(ref failure, e, null);
                }

                Volatile.Write(ref finished, round);
            }
        })
        { IsBackground = true };
        thread.Start();

        var clock = Stopwatch.StartNew();
        int rounds = 0;
        try
        {
            while ((clock.Elapsed < budget || rounds < MinimumRounds) && rounds < 200_000 && clock.Elapsed < s_hardLimit)
            {
                prepare(rounds);
                Volatile.Write(ref go, rounds);
                Skew(seed, rounds, 0);
                left(rounds);
                var spinner = new SpinWait();
                var wait = Stopwatch.StartNew();
                while (Volatile.Read(ref finished) < rounds)
                {
                    if (wait.Elapsed > TimeSpan.FromSeconds(30))
                    {
                        throw new TimeoutException($"Round {rounds} never finished.");
                    }

                    spinner.SpinOnce(sleep1Threshold: -1);
                }

                if (failure is not null)
                {
                    throw new InvalidOperationException($"The racing thread failed in round {rounds}.", failure);
                }

                check(rounds);
                rounds++;
            }
        }
        finally
        {
            Volatile.Write(ref stop, true);

            // Bounded: a racing thread stuck for good (the bug a test looks for) must fail the test, not hang the run.
            thread.Join(TimeSpan.FromSeconds(5));
        }

        return rounds;
    }

    /// <summary>
    /// <see cref="Run"/>, then writes the number of rounds to <paramref name="output"/> and asserts it is more than 100:
    /// a race that ran only a handful of rounds proves nothing.
    /// </summary>
    public static void RunAndCheckRounds(ITestOutputHelper output, TimeSpan budget, int seed, Action<int> prepare, Action<int> left, Action<int> right, Action<int> check)
    {
        int rounds = Run(budget, seed, prepare, left, right, check);
        output.WriteLine($"{rounds} rounds");
        rounds.Should().BeGreaterThan(100);
    }

    // The releasing side is ahead by the other's wake-up: delay each side in turn by a varying few spins.
    private static void Skew(int seed, int round, int side)
    {
        if (((round + seed) & 1) == side)
        {
            Thread.SpinWait(((round >> 1) + (seed * 17)) % 48);
        }
    }
}

/// <summary>Runs posts inline: the continuation is observable as soon as the completing call returns.</summary>
internal sealed class InlineSynchronizationContext : SynchronizationContext
{
    public override void Post(SendOrPostCallback d, object? state) => d(state);
}

/// <summary>Runs every queued task at once on the queueing thread (legal, and common in tests and UI adapters).</summary>
internal sealed class InlineTaskScheduler : TaskScheduler
{
    protected override void QueueTask(Task task) => TryExecuteTask(task);

    protected override bool TryExecuteTaskInline(Task task, bool taskWasPreviouslyQueued) => TryExecuteTask(task);

    protected override IEnumerable<Task>? GetScheduledTasks() => [];
}
