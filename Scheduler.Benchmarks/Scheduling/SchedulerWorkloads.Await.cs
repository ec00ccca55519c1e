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
    /// <paramref name="roundTrips"/> times. Every hop completes a <see cref="TaskCompletionSource{TResult}"/>
    /// the partner awaits, with <see cref="TaskCreationOptions.RunContinuationsAsynchronously"/> so every hop
    /// goes through the scheduler's queues (wake the partner, run it) instead of running inline.
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
            Hop? partner = state.First;
            for (int i = 0; i < state.RoundTrips; i++)
            {
                var mine = new Hop();
                partner!.SetResult(mine);
                partner = await mine.Task;
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
            Hop mine = state.First;
            for (int i = 0; i < state.RoundTrips; i++)
            {
                Hop partner = (await mine.Task)!;
                if (i == state.RoundTrips - 1)
                {
                    partner.SetResult(null);
                }
                else
                {
                    mine = new Hop();
                    partner.SetResult(mine);
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

    private sealed record PingPongState(Hop First, int RoundTrips, WorkloadCompletion Done);

    /// <summary>One hop of the ball: completing it hands the partner the inbox to answer to.</summary>
    private sealed class Hop() : TaskCompletionSource<Hop?>(TaskCreationOptions.RunContinuationsAsynchronously);
}
