using DotNext.Threading.Tasks;
using Scheduler.Benchmarks.Scheduling;
using Scheduler.Sources;

namespace Scheduler.Benchmarks.Sources;

/// <summary>
/// <c>ping_pong</c> with pooled wakers, in exactly the shape of the Tasks variant
/// (<see cref="SchedulerWorkloads.PingPong"/>): <c>pairs</c> pairs of async loops, each hop completing the awaitable
/// the partner awaits with the inbox to answer to, and one <see cref="WorkloadCompletion"/> for the whole run. Only the
/// awaitable differs, so the Tasks and pooled rows differ only by the waker.
/// </summary>
/// <remarks>
/// Unlike <see cref="WakerWorkloads"/>' single-pair loops, nothing here spins waiting for the partner to arm: the ball
/// itself carries the next inbox, so a hundred pairs on two workers cannot wedge a worker in a spin.
/// </remarks>
internal static class WakerPingPongPairs
{
    /// <summary>Ours: every hop rents a fresh <see cref="PooledValueTaskSource{T}"/>; the awaiter's read returns it to the pool.</summary>
    public static Task Pooled(TaskScheduler scheduler, int pairs, int roundTrips)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(roundTrips, 1);
        var done = new WorkloadCompletion(2 * pairs);
        for (int i = 0; i < pairs; i++)
        {
            var first = PooledValueTaskSource<object?>.Rent();
            var state = new PooledState(first, first.Task, roundTrips, done);
            Task.Factory.StartNew(static s => PooledPinger((PooledState)s!), state, CancellationToken.None, TaskCreationOptions.None, scheduler);
            Task.Factory.StartNew(static s => PooledPonger((PooledState)s!), state, CancellationToken.None, TaskCreationOptions.None, scheduler);
        }

        return done.Task;
    }

    /// <summary>
    /// The peer: DotNext.Threading's <see cref="ValueTaskCompletionSource{T}"/> (asynchronous continuations), one per
    /// side, reset and re-armed before each hop; that is how it avoids allocating (it has no pool).
    /// </summary>
    public static Task DotNext(TaskScheduler scheduler, int pairs, int roundTrips)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(roundTrips, 1);
        var done = new WorkloadCompletion(2 * pairs);
        for (int i = 0; i < pairs; i++)
        {
            // A DotNext source must be armed (CreateTask) before it can be completed, so the first inbox is armed here.
            var first = new ValueTaskCompletionSource<object?>(runContinuationsAsynchronously: true);
            var state = new DotNextState(first, Arm(first), roundTrips, done);
            Task.Factory.StartNew(static s => DotNextPinger((DotNextState)s!), state, CancellationToken.None, TaskCreationOptions.None, scheduler);
            Task.Factory.StartNew(static s => DotNextPonger((DotNextState)s!), state, CancellationToken.None, TaskCreationOptions.None, scheduler);
        }

        return done.Task;
    }

    // Serves first: hands the partner a fresh inbox, then waits for the partner's next inbox, roundTrips times.
    private static async Task PooledPinger(PooledState state)
    {
        try
        {
            PooledValueTaskSource<object?>? partner = state.First;
            for (int i = 0; i < state.RoundTrips; i++)
            {
                var mine = PooledValueTaskSource<object?>.Rent();
                ValueTask<object?> answer = mine.Task; // bound to this rental before the partner can see it
                partner!.TrySetResult(mine); // partner is still pending: its owner awaits it, so this cannot hit a later rental
                partner = (PooledValueTaskSource<object?>?)await answer;
            }

            state.Done.Signal();
        }
        catch (Exception e)
        {
            state.Done.Fail(e);
        }
    }

    // Receives, then answers with its next inbox; the last answer carries null (no further exchange).
    private static async Task PooledPonger(PooledState state)
    {
        try
        {
            ValueTask<object?> next = state.FirstTask;
            for (int i = 0; i < state.RoundTrips; i++)
            {
                var partner = (PooledValueTaskSource<object?>)(await next)!;
                if (i == state.RoundTrips - 1)
                {
                    partner.TrySetResult(null);
                }
                else
                {
                    var mine = PooledValueTaskSource<object?>.Rent();
                    next = mine.Task;
                    partner.TrySetResult(mine);
                }
            }

            state.Done.Signal();
        }
        catch (Exception e)
        {
            state.Done.Fail(e);
        }
    }

    private static async Task DotNextPinger(DotNextState state)
    {
        try
        {
            var mine = new ValueTaskCompletionSource<object?>(runContinuationsAsynchronously: true);
            ValueTaskCompletionSource<object?>? partner = state.First;
            for (int i = 0; i < state.RoundTrips; i++)
            {
                ValueTask<object?> answer = Arm(mine); // the previous answer was consumed, so the source may be reset
                partner!.TrySetResult(mine);
                partner = (ValueTaskCompletionSource<object?>?)await answer;
            }

            state.Done.Signal();
        }
        catch (Exception e)
        {
            state.Done.Fail(e);
        }
    }

    private static async Task DotNextPonger(DotNextState state)
    {
        try
        {
            ValueTaskCompletionSource<object?> mine = state.First;
            ValueTask<object?> next = state.FirstTask;
            for (int i = 0; i < state.RoundTrips; i++)
            {
                var partner = (ValueTaskCompletionSource<object?>)(await next)!;
                if (i == state.RoundTrips - 1)
                {
                    partner.TrySetResult(null);
                }
                else
                {
                    next = Arm(mine);
                    partner.TrySetResult(mine);
                }
            }

            state.Done.Signal();
        }
        catch (Exception e)
        {
            state.Done.Fail(e);
        }
    }

    private static ValueTask<object?> Arm(ValueTaskCompletionSource<object?> source)
    {
        source.Reset();
        return source.CreateTask(Timeout.InfiniteTimeSpan, CancellationToken.None);
    }

    private sealed record PooledState(PooledValueTaskSource<object?> First, ValueTask<object?> FirstTask, int RoundTrips, WorkloadCompletion Done);

    private sealed record DotNextState(ValueTaskCompletionSource<object?> First, ValueTask<object?> FirstTask, int RoundTrips, WorkloadCompletion Done);
}
