using System.Collections.Concurrent;
using System.Diagnostics;
using Scheduler.Timers;

namespace Scheduler.Tests.Timers;

/// <summary>
/// Stress tests of the lock-free arm/cancel protocol (TimerWheel.Pending.cs): user threads publish intent on the
/// entry and push it at most once onto an MPSC stack; the lock holder reconciles. Each test hammers one part of
/// it from several threads, over several seeds, while a driver (or a thread standing in for it) runs. They run
/// alone: their spinning threads would otherwise starve the ThreadPool that other timer tests' cancellations and
/// callbacks need on 2 cores.
/// </summary>
[Collection(StressGroup.Name)]
public sealed class PendingChangesStressTests
{
    private static readonly TimeSpan s_timeout = TimeSpan.FromSeconds(20);

    private static long Units(TimeSpan span) => StopwatchUnits.From(span);

    /// <summary>
    /// Several threads race Change and Dispose on shared periodic timers while the driver fires them; then one
    /// final call per timer must win: disarmed and disposed timers go silent (no old schedule keeps firing), armed
    /// ones fire once on the new schedule and not before its deadline.
    /// </summary>
    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(3)]
    [InlineData(4)]
    public async Task Concurrent_Change_and_Dispose_end_in_the_state_of_the_last_call(int seed)
    {
        using var wheel = new TimerWheel();
        const int TimerCount = 48;
        var firings = new ConcurrentQueue<long>[TimerCount];
        var timers = new ITimer[TimerCount];
        for (int i = 0; i < TimerCount; i++)
        {
            firings[i] = new ConcurrentQueue<long>();
            timers[i] = wheel.CreateTimer(
                static state =>
                {
                    var queue = (ConcurrentQueue<long>)state!;
                    queue.Enqueue(Stopwatch.GetTimestamp());
                },
                firings[i],
                TimeSpan.FromMilliseconds(1),
                TimeSpan.FromMilliseconds(1 + (i % 3)));
        }

        // Callbacks queued at once by Change(TimeSpan.Zero, ...): a failure message reports them against the firings seen.
        var queuedAtOnce = new int[TimerCount];
        long end = Stopwatch.GetTimestamp() + Units(TimeSpan.FromMilliseconds(250));
        Task[] hammers = Enumerable.Range(0, 3).Select(t => Task.Factory.StartNew(
            () =>
            {
                var random = new Random((seed * 31) + t);
                while (Stopwatch.GetTimestamp() < end)
                {
                    int index = random.Next(TimerCount);
                    ITimer timer = timers[index];
                    switch (random.Next(6))
                    {
                        case 0:
                            timer.Change(TimeSpan.Zero, TimeSpan.FromMilliseconds(random.Next(1, 4)));
                            Interlocked.Increment(ref queuedAtOnce[index]);
                            break;
                        case 1:
                            timer.Change(TimeSpan.FromTicks(random.Next(1, 30_000)), TimeSpan.FromMilliseconds(random.Next(1, 4)));
                            break;
                        case 2:
                            timer.Change(TimeSpan.FromTicks(random.Next(1, 30_000)), Timeout.InfiniteTimeSpan);
                            break;
                        case 3:
                            timer.Change(Timeout.InfiniteTimeSpan, Timeout.InfiniteTimeSpan);
                            break;
                        case 4:
                            timer.Change(TimeSpan.FromHours(1), TimeSpan.FromMilliseconds(1));
                            break;
                        default:
                            // Give the driver room to fire and reconcile between bursts.
                            Thread.SpinWait(random.Next(1, 2_000));
                            break;
                    }
                }
            },
            CancellationToken.None,
            TaskCreationOptions.LongRunning,
            TaskScheduler.Default)).ToArray();
        await Task.WhenAll(hammers).WaitAsync(s_timeout);

        // Let the ThreadPool catch up with the callbacks queued during the storm (every Change with a zero due time
        // queues one at once): a marker queued behind them runs only once they have been dequeued. The timers keep
        // running whatever schedule the storm left them on, so at the final calls about one callback per timer is
        // in flight.
        for (int round = 0; round < 2; round++)
        {
            var caughtUp = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            ThreadPool.UnsafeQueueUserWorkItem(static tcs => tcs.SetResult(), caughtUp, preferLocal: false);
            await caughtUp.Task.WaitAsync(s_timeout);
            await Task.Delay(20);
        }

        // And until the pool's queues are (nearly) empty: the periodic timers keep adding one callback each per
        // period, so "empty" means no backlog from the storm is left.
        var drainDeadline = DateTime.UtcNow + s_timeout;
        while (ThreadPool.PendingWorkItemCount > TimerCount && DateTime.UtcNow < drainDeadline)
        {
            await Task.Delay(5);
        }

        // The final calls: even timers stop (a third of them disposed), odd ones are re-armed one-shot. Until the
        // driver reconciles a call (up to its 4 ms bound), the old 1-3 ms schedule stays linked and keeps expiring:
        // only the intent check (the word the entry was linked for) keeps those expiries from firing.
        TimeSpan due = TimeSpan.FromMilliseconds(30);
        var deadlines = new long[TimerCount];
        var countsAtFinal = new int[TimerCount];
        long finalCallsStarted = Stopwatch.GetTimestamp();
        for (int i = 0; i < TimerCount; i++)
        {
            if (i % 2 == 0)
            {
                if (i % 6 == 0)
                {
                    timers[i].Dispose();
                }
                else
                {
                    timers[i].Change(Timeout.InfiniteTimeSpan, Timeout.InfiniteTimeSpan).Should().BeTrue();
                }
            }
            else
            {
                deadlines[i] = Stopwatch.GetTimestamp() + Units(due);
                timers[i].Change(due, Timeout.InfiniteTimeSpan).Should().BeTrue();
            }

            countsAtFinal[i] = firings[i].Count;
        }

        await Task.Delay(250);

        // The final one-shots and the firings queued before the final calls run whenever the ThreadPool gets to them,
        // later than 250 ms on a loaded machine (where a count read as settled then moved). Settled once every re-armed
        // timer has fired on its new schedule and nothing of any timer is queued or running.
        _ = SpinWait.SpinUntil(() => Enumerable.Range(0, TimerCount).All(i => i % 2 == 0 || firings[i].Any(t => t >= deadlines[i])), s_timeout);
        _ = TimerCallbacks.WaitUntilIdle(s_timeout, timers);
        int[] settled = firings.Select(f => f.Count).ToArray();
        await Task.Delay(100);
        for (int i = 0; i < TimerCount; i++)
        {
            firings[i].Count.Should().Be(settled[i], $"timer {i} (seed {seed}) is silent after its last call");
            long[] after = firings[i].Skip(countsAtFinal[i]).ToArray();
            // Callbacks already queued when the call returned may still run: as with System.Threading.Timer, a
            // 1 ms periodic timer can have two or three in flight on a busy pool. An old schedule that kept firing
            // until the driver reconciled the call (up to 4 ms later), or after, would add more.
            if (i % 2 == 0)
            {
                after.Length.Should().BeLessThanOrEqualTo(3, $"timer {i} (seed {seed}) stopped: only callbacks already queued when the call returned run");
            }
            else
            {
                long[] early = after.Where(t => t < deadlines[i]).ToArray();
                string detail = early.Length == 0 ? string.Empty :
                    $"; early firings came {(early.Min() - finalCallsStarted) * 1000.0 / Stopwatch.Frequency:F2}–{(early.Max() - finalCallsStarted) * 1000.0 / Stopwatch.Frequency:F2} ms after the final calls began; " +
                    $"{Volatile.Read(ref queuedAtOnce[i])} callbacks were queued at once during the storm, {countsAtFinal[i]} firings seen before the final call";
                early.Length.Should().BeLessThanOrEqualTo(3, $"timer {i} (seed {seed}) never fires early, nor on its old schedule beyond callbacks already queued{detail}");
                after.Count(t => t >= deadlines[i]).Should().Be(1, $"timer {i} (seed {seed}) fires once on its new one-shot schedule");
            }
        }

        wheel.PendingCount.Should().Be(0, "every timer ended disarmed, disposed or fired once");
    }

    /// <summary>
    /// Between a Change and its reconciliation the old schedule is still linked and keeps expiring; the intent
    /// check drops every one of those expiries. Deterministic: a manual clock, and expiries collected without
    /// reconciling, as the driver does when it wakes for a timer before the reconcile deadline of a pushed change.
    /// </summary>
    [Fact]
    public async Task Expiries_of_the_old_schedule_collected_before_reconciliation_never_fire()
    {
        var clock = new ManualClock();
        using var wheel = new TimerWheel(TimeSpan.FromMilliseconds(1), clock, startDriver: false);
        int fired = 0;
        using ITimer timer = wheel.CreateTimer(_ => Interlocked.Increment(ref fired), null, TimeSpan.FromMilliseconds(1), TimeSpan.FromMilliseconds(1));
        wheel.RunDueTimers();
        clock.Advance(TimeSpan.FromMilliseconds(1));
        wheel.RunDueTimers(reconcilePending: false);
        SpinWait.SpinUntil(() => Volatile.Read(ref fired) == 1, s_timeout).Should().BeTrue("the periodic schedule is linked and fires");

        timer.Change(Timeout.InfiniteTimeSpan, Timeout.InfiniteTimeSpan).Should().BeTrue();
        for (int i = 0; i < 10; i++)
        {
            clock.Advance(TimeSpan.FromMilliseconds(1));
            wheel.RunDueTimers(reconcilePending: false);
        }

        timer.Change(TimeSpan.FromMilliseconds(50), Timeout.InfiniteTimeSpan).Should().BeTrue();
        clock.Advance(TimeSpan.FromMilliseconds(1));
        wheel.RunDueTimers(reconcilePending: false);
        await Task.Delay(100);
        Volatile.Read(ref fired).Should().Be(1, "expiries of a replaced schedule are dropped even while it is still linked");

        wheel.RunDueTimers();
        clock.Advance(TimeSpan.FromMilliseconds(50));
        wheel.RunDueTimers();
        SpinWait.SpinUntil(() => Volatile.Read(ref fired) == 2, s_timeout).Should().BeTrue("the new schedule fires once reconciled and due");
        await Task.Delay(50);
        Volatile.Read(ref fired).Should().Be(2);
    }

    /// <summary>
    /// An entry is on the pending stack at most once: writers on four threads race Change on a few timers while a
    /// fifth drains the stack (RunDueTimers, standing in for the driver) and moves a manual clock. A double push
    /// would corrupt the stack's links or link one entry twice, which the counts at the end expose.
    /// </summary>
    [Theory]
    [InlineData(11)]
    [InlineData(12)]
    [InlineData(13)]
    public async Task Racing_writers_and_a_draining_lock_holder_keep_each_entry_linked_at_most_once(int seed)
    {
        var clock = new ManualClock();
        using var wheel = new TimerWheel(TimeSpan.FromMilliseconds(1), clock, startDriver: false);
        const int TimerCount = 4;
        var timers = new ITimer[TimerCount];
        for (int i = 0; i < TimerCount; i++)
        {
            timers[i] = wheel.CreateTimer(static _ => { }, null, Timeout.InfiniteTimeSpan, Timeout.InfiniteTimeSpan);
        }

        using var stop = new CancellationTokenSource();
        Task drainer = Task.Factory.StartNew(
            () =>
            {
                var random = new Random(seed);
                while (!stop.IsCancellationRequested)
                {
                    clock.AdvanceUnits(random.Next(0, (int)Units(TimeSpan.FromMilliseconds(2))));
                    wheel.RunDueTimers();
                    wheel.LinkedCount.Should().BeLessThanOrEqualTo(TimerCount, "an entry is linked at most once");
                }
            },
            CancellationToken.None,
            TaskCreationOptions.LongRunning,
            TaskScheduler.Default);

        Task[] writers = Enumerable.Range(0, 4).Select(t => Task.Factory.StartNew(
            () =>
            {
                var random = new Random((seed * 17) + t);
                for (int n = 0; n < 40_000; n++)
                {
                    ITimer timer = timers[random.Next(TimerCount)];
                    switch (random.Next(3))
                    {
                        case 0:
                            timer.Change(TimeSpan.FromMilliseconds(random.Next(1, 5)), TimeSpan.FromMilliseconds(random.Next(0, 3)));
                            break;
                        case 1:
                            timer.Change(TimeSpan.FromHours(1), Timeout.InfiniteTimeSpan);
                            break;
                        default:
                            timer.Change(Timeout.InfiniteTimeSpan, Timeout.InfiniteTimeSpan);
                            break;
                    }
                }
            },
            CancellationToken.None,
            TaskCreationOptions.LongRunning,
            TaskScheduler.Default)).ToArray();

        await Task.WhenAll(writers).WaitAsync(s_timeout);
        await stop.CancelAsync();
        await drainer.WaitAsync(s_timeout);

        // The last word, from one thread: timers 0 and 1 armed far out, 2 disarmed, 3 disposed.
        timers[0].Change(TimeSpan.FromHours(1), Timeout.InfiniteTimeSpan);
        timers[1].Change(TimeSpan.FromHours(2), TimeSpan.FromHours(1));
        timers[2].Change(Timeout.InfiniteTimeSpan, Timeout.InfiniteTimeSpan);
        timers[3].Dispose();
        wheel.PendingCount.Should().Be(2, $"exactly the two armed timers are linked (seed {seed})");
        wheel.TryGetNextWakeTimestamp(out long next).Should().BeTrue();
        // The next wake is a cascade point of the one-hour slot (within minutes of it), never a stale short schedule.
        next.Should().BeGreaterThanOrEqualTo(clock.Now + Units(TimeSpan.FromMinutes(30)), "no stale short schedule is left linked");

        timers[0].Dispose();
        timers[1].Dispose();
        wheel.PendingCount.Should().Be(0);
    }

    /// <summary>
    /// Delay slot reuse (<see cref="DelayChunk"/>) never crosses operations: tasks start delays on two wheels and cancel
    /// them at random moments (before, around and after expiry) while a third wheel is disposed under its own
    /// pending delays. A slot freed while a wheel still referenced it would complete some later operation —
    /// early, canceled with a foreign token, or with another wheel's ObjectDisposedException.
    /// </summary>
    [Theory]
    [InlineData(21)]
    [InlineData(22)]
    [InlineData(23)]
    public async Task Delays_cancelled_and_expiring_across_wheels_complete_exactly_once_and_only_their_own_way(int seed)
    {
        using var first = new TimerWheel();
        using var second = new TimerWheel();
        int succeeded = 0;
        int canceled = 0;
        var failures = new ConcurrentQueue<string>();

        async Task Loop(int worker)
        {
            var random = new Random((seed * 101) + worker);
            for (int n = 0; n < 400; n++)
            {
                TimerWheel wheel = random.Next(2) == 0 ? first : second;
                using var cts = new CancellationTokenSource();
                TimeSpan delay = TimeSpan.FromMicroseconds(random.Next(50, 3_000));
                long start = Stopwatch.GetTimestamp();
                ValueTask wait = wheel.DelayAsync(delay, cts.Token);
                switch (random.Next(4))
                {
                    case 0:
                        cts.Cancel();
                        break;
                    case 1:
                        cts.CancelAfter(TimeSpan.FromMicroseconds(random.Next(0, 3_000)));
                        break;
                    case 2:
                        Thread.SpinWait(random.Next(0, 5_000));
                        cts.Cancel();
                        break;
                    default:
                        break;
                }

                try
                {
                    await wait;
                    Interlocked.Increment(ref succeeded);
                    if (Stopwatch.GetElapsedTime(start) < delay)
                    {
                        failures.Enqueue($"early: {Stopwatch.GetElapsedTime(start)} < {delay}");
                    }
                }
                catch (OperationCanceledException exception) when (exception.CancellationToken == cts.Token)
                {
                    Interlocked.Increment(ref canceled);
                }
                catch (Exception exception)
                {
                    failures.Enqueue($"{exception.GetType().Name}: {exception.Message}");
                }
            }
        }

        // The disposed wheel: its pending delays complete with ObjectDisposedException, nothing else does.
        async Task DisposedWheel()
        {
            var random = new Random(seed);
            for (int round = 0; round < 20; round++)
            {
                var doomed = new TimerWheel();
                using var cts = new CancellationTokenSource();
                Task[] pending = Enumerable.Range(0, 50).Select(_ => doomed.DelayAsync(TimeSpan.FromMilliseconds(random.Next(1, 50)), cts.Token).AsTask()).ToArray();
                if (round % 2 == 0)
                {
                    cts.CancelAfter(TimeSpan.FromMicroseconds(random.Next(0, 500)));
                }

                Thread.SpinWait(random.Next(0, 20_000));
                doomed.Dispose();
                foreach (Task task in pending)
                {
                    try
                    {
                        await task.WaitAsync(s_timeout);
                    }
                    catch (ObjectDisposedException)
                    {
                    }
                    catch (OperationCanceledException exception) when (exception.CancellationToken == cts.Token)
                    {
                    }
                }
            }
        }

        Task[] loops = Enumerable.Range(0, 6).Select(w => Task.Run(() => Loop(w))).Append(Task.Run(DisposedWheel)).ToArray();
        await Task.WhenAll(loops).WaitAsync(s_timeout);

        failures.Should().BeEmpty($"every delay ends by its own expiry or its own token (seed {seed})");
        (succeeded + canceled).Should().Be(6 * 400);
        succeeded.Should().BePositive();
        canceled.Should().BePositive();
        first.PendingCount.Should().Be(0);
        second.PendingCount.Should().Be(0);
    }

    /// <summary>
    /// Cancelled timers do not stay linked until their 30 s deadline: with nobody asking, the driver reconciles
    /// the cancels within its bound (a few milliseconds, or at once per 1,024 pushes).
    /// </summary>
    [Fact]
    public async Task Cancelled_timeouts_are_unlinked_by_the_driver_within_its_bound()
    {
        using var wheel = new TimerWheel();
        TimeSpan timeout = TimeSpan.FromSeconds(30);

        // Armed and reconciled first (so they are linked), then cancelled: the timeout pattern with real work between.
        var timers = new ITimer[5_000];
        var delays = new CancellationTokenSource[5_000];
        var waits = new Task[5_000];
        for (int i = 0; i < timers.Length; i++)
        {
            timers[i] = wheel.CreateTimer(static _ => { }, null, timeout, Timeout.InfiniteTimeSpan);
            delays[i] = new CancellationTokenSource();
            waits[i] = wheel.DelayAsync(timeout, delays[i].Token).AsTask();
        }

        SpinWait.SpinUntil(() => wheel.LinkedCount == 10_000, s_timeout).Should().BeTrue("the driver links pushed arms by itself");
        for (int i = 0; i < timers.Length; i++)
        {
            timers[i].Dispose();
            delays[i].Cancel();
        }

        long start = Stopwatch.GetTimestamp();
        SpinWait.SpinUntil(() => wheel.LinkedCount == 0, s_timeout).Should().BeTrue("the driver unlinks pushed cancels by itself");
        // A generous bound, still well within the deadlines: the driver unlinks within its 4 ms bound, but this thread
        // (and the driver) can be held off a loaded machine's cores for seconds (3.45 s measured in a CI run).
        Stopwatch.GetElapsedTime(start).Should().BeLessThan(TimeSpan.FromSeconds(10), "well within the 30 s deadlines");
        foreach (Task wait in waits)
        {
            Func<Task> act = () => wait.WaitAsync(s_timeout);
            await act.Should().ThrowAsync<OperationCanceledException>();
        }

        foreach (CancellationTokenSource cts in delays)
        {
            cts.Dispose();
        }
    }
}

/// <summary>Stress tests that saturate the cores run alone, after the parallel ones.</summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class StressGroup
{
    public const string Name = "Timers stress";
}
