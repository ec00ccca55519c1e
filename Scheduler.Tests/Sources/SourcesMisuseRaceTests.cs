using System.Runtime.CompilerServices;
using System.Threading.Tasks.Sources;
using Scheduler.Sources;

namespace Scheduler.Tests.Sources;

/// <summary>
/// A ValueTask awaited twice at the same moment (two threads racing the same misuse) must fail loudly for one of
/// them and leave the other's outcome intact: no lost or swapped continuation, no torn or reset result.
/// </summary>
public sealed class SourcesMisuseRaceTests(Xunit.Abstractions.ITestOutputHelper output)
{
    private static readonly TimeSpan Budget = TimeSpan.FromSeconds(2);

    // The result type of these tests' PooledValueTaskSource, used by no other class: its pool is static per type, and a
    // source the race returned to a shared pool can be rented (and awaited) by a test running in parallel before the
    // check looks at it. A source is returned to its thread's cache only while that slot is free; from the second round
    // on the reader's slot holds the previous round's source, so the next one goes to the shared slots.
    private enum RoundValue
    {
    }

    [Fact]
    public void Racing_double_registration_keeps_the_winner_continuation_and_state()
    {
        // Two registrations race; the loser does not throw out of OnCompleted (an await's builder would rethrow that on
        // the ThreadPool): its continuation runs on its own and its read throws. Each continuation must run exactly once
        // with its own state (a loser that overwrote the winner's registration would lose or swap one), and of the two
        // reads exactly one gets the value.
        var context = new InlineSynchronizationContext();
        IValueTaskSource<RoundValue> source = PooledValueTaskSource<RoundValue>.Rent();
        short token = 0;
        var states = new object[] { new(), new() };
        var runs = new int[2];
        var seenStates = new object?[2];
        var reads = new int[2]; // 1 = the round's value, 2 = InvalidOperationException, 3 = anything else
        int currentRound = 0;
        Action<object?>[] continuations = [s => Record(0, s), s => Record(1, s)];

        void Record(int which, object? state)
        {
            seenStates[which] = state;
            try
            {
                reads[which] = source.GetResult(token) == (RoundValue)Volatile.Read(ref currentRound) ? 1 : 3;
            }
            catch (InvalidOperationException)
            {
                reads[which] = 2;
            }

            Interlocked.Increment(ref runs[which]);
        }

        void Register(int side)
        {
            SynchronizationContext.SetSynchronizationContext(context);
            try
            {
                source.OnCompleted(continuations[side], states[side], token, ValueTaskSourceOnCompletedFlags.UseSchedulingContext);
            }
            finally
            {
                SynchronizationContext.SetSynchronizationContext(null);
            }
        }

        TwoThreadRace.RunAndCheckRounds(
            output,
            budget: Budget,
            seed: 0,
            prepare: round =>
            {
                var fresh = PooledValueTaskSource<RoundValue>.Rent();
                source = fresh;
                token = fresh.Version;
                Volatile.Write(ref currentRound, round);
                runs[0] = runs[1] = 0;
                seenStates[0] = seenStates[1] = null;
                reads[0] = reads[1] = 0;
            },
            left: _ => Register(0),
            right: _ => Register(1),
            check: round =>
            {
                ((PooledValueTaskSource<RoundValue>)source).TrySetResult((RoundValue)round).Should().BeTrue();
                SpinWait.SpinUntil(() => Volatile.Read(ref runs[0]) + Volatile.Read(ref runs[1]) >= 2, TimeSpan.FromSeconds(10));
                string what = $"round {round}: runs {runs[0]}/{runs[1]}, reads {reads[0]}/{reads[1]}";
                runs.Should().Equal([1, 1], $"each continuation runs exactly once, the loser's on its own ({what})");
                seenStates[0].Should().BeSameAs(states[0], $"nobody's state is swapped ({what})");
                seenStates[1].Should().BeSameAs(states[1], $"nobody's state is swapped ({what})");
                reads.Order().Should().Equal([1, 2], $"exactly one read gets the value, the other throws ({what})");
            });
    }

    // The same object is kept for every round of a run, so a write landing late (after the winner's reset) would show.
    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void Racing_double_read_never_returns_a_reset_or_torn_result(bool builtIn)
    {
        var pooled = PooledValueTaskSource<Payload>.Rent();
        var custom = new CoreSource<Payload>();
        IValueTaskSource<Payload> source = builtIn ? pooled : custom;
        short token = 0;
        string? text = null;
        var outcomes = new int[2]; // 1 = the expected value, 2 = InvalidOperationException, anything else = a corrupt read
        var seen = new string?[2];

        void Read(int side, int round)
        {
            try
            {
                Payload value = source.GetResult(token);
                seen[side] = value.Describe(round);
                outcomes[side] = seen[side] is null && ReferenceEquals(value.Text, text) ? 1 : 3;
            }
            catch (InvalidOperationException)
            {
                outcomes[side] = 2;
            }
        }

        TwoThreadRace.RunAndCheckRounds(
            output,
            budget: Budget,
            seed: 0,
            prepare: round =>
            {
                if (builtIn)
                {
                    // The winner returned the source to the pool (maybe to another thread's cache): rent afresh.
                    pooled = PooledValueTaskSource<Payload>.Rent();
                    source = pooled;
                }

                token = builtIn ? pooled.Version : custom.Version;
                text = round.ToString(System.Globalization.CultureInfo.InvariantCulture);
                var payload = new Payload(text, round);
                (builtIn ? pooled.TrySetResult(token, payload) : custom.TrySetResult(token, payload)).Should().BeTrue();
                outcomes[0] = outcomes[1] = 0;
            },
            left: round => Read(0, round),
            right: round => Read(1, round),
            check: round =>
            {
                outcomes.Should().OnlyContain(o => o == 1 || o == 2, $"a racing second read throws or sees the value, never a reset one (round {round}: {seen[0]} / {seen[1]})");
                outcomes.Should().Contain(1, $"one of the readers gets the value (round {round})");
                if (builtIn)
                {
                    outcomes.Should().Contain(2, $"the second of two reads of one rental throws (round {round})");
                }
            });
    }

    // The continuation is queued (held by the context) when a direct read of the same ValueTask comes: that read must
    // lose. Reading and resetting under the queued continuation would run it later on a reset (maybe re-rented) source:
    // with no continuation any more (an exception on whatever thread runs it) or with the next rental's, early.
    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void A_direct_read_while_the_awaiting_continuation_is_queued_loses_and_the_continuation_gets_the_value(bool builtIn)
    {
        var context = new HeldPostsSynchronizationContext();
        var pooled = PooledValueTaskSource<RoundValue>.Rent();
        var custom = new CoreSource<RoundValue>();
        IValueTaskSource<RoundValue> source = builtIn ? pooled : custom;
        short token = builtIn ? pooled.Version : custom.Version;
        RoundValue? received = null;

        SynchronizationContext? previous = SynchronizationContext.Current;
        SynchronizationContext.SetSynchronizationContext(context);
        try
        {
            source.OnCompleted(_ => received = source.GetResult(token), null, token, ValueTaskSourceOnCompletedFlags.UseSchedulingContext);
        }
        finally
        {
            SynchronizationContext.SetSynchronizationContext(previous);
        }

        (builtIn ? pooled.TrySetResult(token, (RoundValue)42) : custom.TrySetResult(token, (RoundValue)42)).Should().BeTrue();
        context.Held.Should().Be(1, "the continuation was posted, not run");

        source.Invoking(s => s.GetResult(token)).Should().Throw<InvalidOperationException>("the operation is awaited and its continuation is queued")
            .WithMessage("A continuation is already registered*can be awaited only once.");

        context.RunAll();
        received.Should().Be((RoundValue)42, "the awaiting continuation still gets the outcome");
        (builtIn ? pooled.HoldsContinuationForTests : custom.HoldsContinuationForTests).Should().BeFalse("the continuation's read reset the source");
        (builtIn ? pooled.Version : custom.Version).Should().Be(unchecked((short)(token + 1)), "exactly one reset");
    }

#pragma warning disable CA2012 // deliberate misuse: one ValueTask read twice
    // The race behind AsTask racing a direct await (found by CI in session 28, through a socket receive): once the
    // registered continuation has started, a direct read of the same ValueTask is an ordinary second reader and may win.
    // The continuation's reads then meet a consumed token. The BCL's AsTask callback calls GetStatus outside its try, so
    // a GetStatus that threw there ended the process; it must report the operation as faulted instead, and the read
    // that follows (inside the try) throws InvalidOperationException. Deterministic: the continuation lets the direct
    // read win before it looks.
    [Theory]
    [InlineData("pooled")]
    [InlineData("core")]
    [InlineData("delay")]
    public void A_direct_read_that_wins_once_the_continuation_started_leaves_the_continuation_a_faulted_status_not_a_throw(string kind)
    {
        using var wheel = new Scheduler.Timers.TimerWheel();
        var pooled = PooledValueTaskSource<RoundValue>.Rent();
        var custom = new CoreSource<RoundValue>();
        short token = kind == "pooled" ? pooled.Version : custom.Version;
        ValueTask<RoundValue> generic = kind == "pooled" ? pooled.Task : new ValueTask<RoundValue>(custom, token);
        ValueTask delay = kind == "delay" ? wheel.DelayAsync(TimeSpan.FromMilliseconds(5)) : default;
        Func<bool> isCompleted = kind == "delay" ? () => delay.IsCompleted : () => generic.IsCompleted;
        Action read = kind == "delay" ? () => delay.GetAwaiter().GetResult() : () => generic.GetAwaiter().GetResult();

        var observed = new TaskCompletionSource<(Exception? DirectRead, Exception? Status, bool IsCompleted, Exception? ContinuationRead)>(
            TaskCreationOptions.RunContinuationsAsynchronously);
        Action continuation = () =>
        {
            // The continuation has started (taken); another thread's direct read wins now.
            Exception? directRead = Record.Exception(() => Task.Run(read).GetAwaiter().GetResult());
            bool completed = false;
            Exception? status = Record.Exception(() => completed = isCompleted());
            Exception? continuationRead = Record.Exception(read);
            observed.SetResult((directRead, status, completed, continuationRead));
        };
        if (kind == "delay")
        {
            delay.GetAwaiter().UnsafeOnCompleted(continuation);
        }
        else
        {
            generic.GetAwaiter().UnsafeOnCompleted(continuation);
            (kind == "pooled" ? pooled.TrySetResult(token, (RoundValue)7) : custom.TrySetResult(token, (RoundValue)7)).Should().BeTrue();
        }

        observed.Task.Wait(TimeSpan.FromSeconds(10)).Should().BeTrue("the continuation runs");
        var (directReadError, statusError, reportedCompleted, continuationReadError) = observed.Task.Result;
        directReadError.Should().BeNull("the direct read came first, after the continuation had started");
        statusError.Should().BeNull("GetStatus of a consumed token must not throw: the BCL's AsTask callback calls it outside its try");
        reportedCompleted.Should().BeTrue("a consumed operation reports itself completed (faulted), so the read that follows throws");
        continuationReadError.Should().BeOfType<InvalidOperationException>("the loser of two reads fails loudly");
    }

    // The same race through the BCL's real AsTask callback, many rounds: without the fix above, a round where the direct
    // read wins between the callback's start and its GetStatus ends the test process.
    [Theory]
    [InlineData("pooled")]
    [InlineData("delay")]
    public async Task AsTask_racing_a_direct_await_of_the_same_ValueTask_fails_exactly_one_of_them_and_never_the_process(string kind)
    {
        using var wheel = new Scheduler.Timers.TimerWheel();
        int directWins = 0, taskWins = 0;
        int rounds = kind == "delay" ? 400 : 2000; // a delay round waits a tick or two
        for (int round = 0; round < rounds; round++)
        {
            var pooled = PooledValueTaskSource<RoundValue>.Rent();
            short token = pooled.Version;
            ValueTask valueTask = kind == "pooled" ? new ValueTask(pooled, token) : wheel.DelayAsync(TimeSpan.FromMilliseconds(1));
            Task viaTask = valueTask.AsTask();
            // The direct reader reads the moment the operation completes: right when the Task's callback starts.
            Task direct = Task.Run(() =>
            {
                var spinner = new SpinWait();
                while (!valueTask.IsCompleted)
                {
                    spinner.SpinOnce(sleep1Threshold: -1);
                }

                valueTask.GetAwaiter().GetResult();
            });
            if (kind == "pooled")
            {
                pooled.TrySetResult(token, (RoundValue)round);
            }

            await Task.WhenAll(Settle(viaTask), Settle(direct)).WaitAsync(TimeSpan.FromSeconds(10));
            Task[] both = [viaTask, direct];
            both.Count(t => t.IsCompletedSuccessfully).Should().BeGreaterThanOrEqualTo(1, "the outcome goes to a reader (round {0})", round);
            both.Where(t => !t.IsCompletedSuccessfully).Should().OnlyContain(t => t.Exception!.InnerException is InvalidOperationException, "the loser fails loudly");
            directWins += direct.IsCompletedSuccessfully && !viaTask.IsCompletedSuccessfully ? 1 : 0;
            taskWins += viaTask.IsCompletedSuccessfully && !direct.IsCompletedSuccessfully ? 1 : 0;
        }

        output.WriteLine($"direct read won {directWins}, AsTask won {taskWins}");

        static async Task Settle(Task task)
        {
            try
            {
                await task;
            }
            catch (InvalidOperationException)
            {
            }
        }
    }

#pragma warning restore CA2012

    // A completed source: an await registers (its continuation is dispatched at once) while another thread reads the
    // result. The built-in source gives the outcome to exactly one of them, the other throws. A WakerCore source in the
    // docs' shape (GetResult, then TryReset in a finally) reads before it resets, so both may see it, or both may
    // throw: the direct read is refused while the continuation is due, and its finally's TryReset may then reset under
    // the continuation's read once that has started. Either way: loud, no wrong value, and nothing of the await is left in the source after
    // the reset (a registration writing its fields after a racing reset would leave them for the next use).
    [Theory]
    [InlineData(true, 0)]
    [InlineData(false, 0)]
    [InlineData(true, 1)]
    [InlineData(false, 1)]
    public void A_read_racing_a_registration_on_a_completed_source_leaves_the_next_use_clean(bool builtIn, int seed)
    {
        var context = new InlineSynchronizationContext();
        var pooled = PooledValueTaskSource<RoundValue>.Rent();
        var custom = new CoreSource<RoundValue>();
        IValueTaskSource<RoundValue> source = custom;
        short token = 0;
        int registration = 0, continuation = 0, reader = 0; // 0 = nothing, 1 = got the value, 2 = InvalidOperationException
        int continuationRuns = 0;

        void Register(int round)
        {
            SynchronizationContext.SetSynchronizationContext(context);
            try
            {
                // A registration that loses (the reader consumed and reset first) does not throw: its continuation runs
                // on its own, on the ThreadPool, and its read throws there.
                source.OnCompleted(
                    _ =>
                    {
                        continuation = Read(round);
                        Interlocked.Increment(ref continuationRuns);
                    },
                    null,
                    token,
                    ValueTaskSourceOnCompletedFlags.UseSchedulingContext);
                registration = 1;
            }
            catch (InvalidOperationException)
            {
                registration = 2;
            }
            finally
            {
                SynchronizationContext.SetSynchronizationContext(null);
            }
        }

        int Read(int round)
        {
            try
            {
                return source.GetResult(token) == (RoundValue)round ? 1 : 3;
            }
            catch (InvalidOperationException)
            {
                return 2;
            }
        }

        TwoThreadRace.RunAndCheckRounds(
            output,
            budget: Budget,
            seed: seed,
            prepare: round =>
            {
                if (builtIn)
                {
                    pooled = PooledValueTaskSource<RoundValue>.Rent();
                    source = pooled;
                }

                token = builtIn ? pooled.Version : custom.Version;
                (builtIn ? pooled.TrySetResult(token, (RoundValue)round) : custom.TrySetResult(token, (RoundValue)round)).Should().BeTrue();
                registration = continuation = reader = continuationRuns = 0;
            },
            left: Register,
            right: round => reader = Read(round),
            check: round =>
            {
                SpinWait.SpinUntil(() => Volatile.Read(ref continuationRuns) >= 1, TimeSpan.FromSeconds(10));
                string what = $"round {round}: registration {registration}, continuation {continuation} (ran {continuationRuns}), reader {reader}";
                registration.Should().Be(1, $"a registration never throws for a lost race ({what})");
                new[] { continuation, reader }.Should().OnlyContain(o => o != 3, $"nobody reads a wrong value ({what})");
                if (builtIn)
                {
                    (continuation == 1 ^ reader == 1).Should().BeTrue($"a consuming read gives the outcome to exactly one of them ({what})");
                }
                continuationRuns.Should().Be(1, $"the continuation runs exactly once, dispatched or on its own ({what})");
                (builtIn ? pooled.HoldsContinuationForTests : custom.HoldsContinuationForTests).Should().BeFalse($"a reset source holds nothing of the await ({what})");
                (builtIn ? pooled.Version : custom.Version).Should().Be(unchecked((short)(token + 1)), $"exactly one reset ({what})");
            });
    }

    /// <summary>A result large enough that copying it takes a while, and with a reference, so a reset clears it.</summary>
    private readonly struct Payload
    {
        private readonly Words _words;

        public Payload(string text, long value)
        {
            Text = text;
            for (int i = 0; i < Words.Length; i++)
            {
                _words[i] = value;
            }
        }

        public string? Text { get; }

        /// <summary>Null when every word holds <paramref name="round"/>, else what was read.</summary>
        public string? Describe(long round)
        {
            for (int i = 0; i < Words.Length; i++)
            {
                if (_words[i] != round)
                {
                    return $"word {i} = {_words[i]}, text = {Text ?? "null"}";
                }
            }

            return Text is null ? "text = null" : null;
        }

        [InlineArray(Length)]
        private struct Words
        {
            public const int Length = 64;
            private long _first;
        }
    }

    /// <summary>A custom awaitable in the docs' shape (GetResult, then TryReset in a finally), kept across rounds.</summary>
    private sealed class CoreSource<T> : IValueTaskSource<T>, IThreadPoolWorkItem
    {
        private WakerCore<T> _core;

        public CoreSource() => _core = new WakerCore<T>(this);

        public short Version => _core.Version;

        public bool HoldsContinuationForTests => _core.HoldsContinuationForTests;

        public bool TrySetResult(short version, T result) => _core.TrySetResult(version, result);

        public T GetResult(short token)
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
                _core.TryReset(token);
            }
        }

        public ValueTaskSourceStatus GetStatus(short token) => _core.GetStatus(token);

        public void OnCompleted(Action<object?> continuation, object? state, short token, ValueTaskSourceOnCompletedFlags flags) =>
            _core.OnCompleted(continuation, state, token, flags);

        void IThreadPoolWorkItem.Execute() => _core.InvokeContinuation();
    }
}
