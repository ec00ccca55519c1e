namespace Scheduler.Benchmarks.Scheduling;

internal static partial class SchedulerWorkloads
{
    private static readonly Func<object?, Task> s_yieldLoop = static state => YieldLoop((YieldState)state!);

    /// <summary>yield_many: <paramref name="tasks"/> tasks each doing <paramref name="yields"/> <c>await Task.Yield()</c>.</summary>
    public static Task YieldMany(TaskScheduler scheduler, int tasks, int yields)
    {
        var yieldState = new YieldState(yields, new WorkloadCompletion(tasks));
        for (int i = 0; i < tasks; i++)
        {
            Task.Factory.StartNew(s_yieldLoop, yieldState, CancellationToken.None, TaskCreationOptions.None, scheduler);
        }

        return yieldState.Done.Task;
    }

    /// <summary>
    /// ping_pong with Tasks: <paramref name="pairs"/> pairs of tasks, each pair bouncing a ball
    /// <paramref name="roundTrips"/> times. Every hop completes a <see cref="TaskCompletionSource"/> the partner
    /// awaits, with <see cref="TaskCreationOptions.RunContinuationsAsynchronously"/> so every hop goes through the
    /// scheduler's queues (wake the partner, run it) instead of running inline. The ball carries the inbox to answer to.
    /// </summary>
    public static Task PingPong(TaskScheduler scheduler, int pairs, int roundTrips)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(roundTrips, 1);
        var done = new WorkloadCompletion(2 * pairs);
        for (int i = 0; i < pairs; i++)
        {
            var first = new Hop();
            Task.Factory.StartNew(static state => Pinger((PingPongState)state!), new PingPongState(first, roundTrips, done), CancellationToken.None, TaskCreationOptions.None, scheduler);
            Task.Factory.StartNew(static state => Ponger((PingPongState)state!), new PingPongState(first, roundTrips, done), CancellationToken.None, TaskCreationOptions.None, scheduler);
        }

        return done.Task;
    }

    private static async Task YieldLoop(YieldState state)
    {
        try
        {
            for (int i = 0; i < state.Yields; i++)
            {
                await Task.Yield();
            }

            state.Done.Signal();
        }
        catch (Exception e)
        {
            state.Done.Fail(e);
        }
    }

    // Serves first: hands the partner its own inbox, then waits for the partner's next inbox, roundTrips times.
    private static async Task Pinger(PingPongState state)
    {
        try
        {
            Hop? partner = state.TakeFirst();
            for (int i = 0; i < state.RoundTrips; i++)
            {
                var mine = new Hop();
                partner!.Pass(mine);
                await mine.Task;
                partner = mine.TakeBall();
            }

            state.Done.Signal();
        }
        catch (Exception e)
        {
            state.Done.Fail(e);
        }
    }

    // Receives, then answers with its next inbox; the last answer carries null (no further exchange).
    private static async Task Ponger(PingPongState state)
    {
        try
        {
            Hop mine = state.TakeFirst();
            for (int i = 0; i < state.RoundTrips; i++)
            {
                await mine.Task;
                Hop partner = mine.TakeBall()!;
                if (i == state.RoundTrips - 1)
                {
                    partner.Pass(null);
                }
                else
                {
                    mine = new Hop();
                    partner.Pass(mine);
                }
            }

            state.Done.Signal();
        }
        catch (Exception e)
        {
            state.Done.Fail(e);
        }
    }

    private sealed record YieldState(int Yields, WorkloadCompletion Done);

    /// <summary>One side's start: the first hop (handed over once, see <see cref="Hop"/>), the length and the shared completion.</summary>
    private sealed class PingPongState(Hop first, int roundTrips, WorkloadCompletion done)
    {
        private Hop? _first = first;

        public int RoundTrips { get; } = roundTrips;

        public WorkloadCompletion Done { get; } = done;

        public Hop TakeFirst() => Interlocked.Exchange(ref _first, null) ?? throw new InvalidOperationException("The first hop was already taken.");
    }

    /// <summary>
    /// One hop: completing it hands the partner the ball, the inbox to answer to. The ball sits in a field that the
    /// receiver clears, not in the task's result, and nothing keeps the first hop: hops must not form a chain. A chain of
    /// every hop of the run (each result the next hop) made the row time the GC instead of the hops: a dead hop in an
    /// older generation roots the rest of the chain at every gen-0 collection, which then promoted ~7.5 MB of 16 and
    /// paused 8–13 ms, and the side allocating more per hop (a custom scheduler's await, see docs/scheduling.md) paid it
    /// several times over.
    /// </summary>
    private sealed class Hop() : TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously)
    {
        private Hop? _ball;

        public void Pass(Hop? ball)
        {
            _ball = ball; // ordered before the completion the partner awaits
            SetResult();
        }

        public Hop? TakeBall()
        {
            Hop? ball = _ball;
            _ball = null;
            return ball;
        }
    }
}
