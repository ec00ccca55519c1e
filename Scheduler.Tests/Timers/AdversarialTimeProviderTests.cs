using System.Collections.Concurrent;
using System.Diagnostics;
using System.Diagnostics.Metrics;
using System.Runtime.CompilerServices;
using Scheduler.IO;
using Scheduler.Tests.Scheduling;
using Scheduler.Timers;

namespace Scheduler.Tests.Timers;

/// <summary>
/// Adversarial checks of the wheel as a <see cref="TimeProvider"/> (its <see cref="ITimer"/>s changed and disposed from
/// their own callbacks, the BCL's consumers over it, odd tick durations, throwing callbacks) and of the scheduler's
/// statistics and <c>Scheduler</c> meter under churn. Angles the other adversarial files leave alone.
/// </summary>
public sealed class AdversarialTimeProviderTests
{
    private static readonly TimeSpan s_timeout = TimeSpan.FromSeconds(10);

    [Fact]
    public async Task A_one_shot_made_periodic_from_its_own_callback_ticks_never_early_and_stops_when_stopped_from_a_later_callback()
    {
        using var wheel = new TimerWheel();
        TimeSpan period = TimeSpan.FromMilliseconds(3);
        int calls = 0;
        long rearmedAt = 0;
        long secondAt = 0;
        var stopped = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var created = new ManualResetEventSlim();
        ITimer? timer = null;
        timer = wheel.CreateTimer(
            _ =>
            {
                created.Wait();
                int n = Interlocked.Increment(ref calls);
                if (n == 1)
                {
                    Volatile.Write(ref rearmedAt, Stopwatch.GetTimestamp());
                    timer!.Change(period, period).Should().BeTrue();
                }
                else if (n == 2)
                {
                    Volatile.Write(ref secondAt, Stopwatch.GetTimestamp());
                }
                else if (n == 8)
                {
                    timer!.Change(Timeout.InfiniteTimeSpan, period).Should().BeTrue("an infinite due time stops it whatever the period");
                    stopped.TrySetResult();
                }
            },
            null,
            TimeSpan.FromMilliseconds(1),
            Timeout.InfiniteTimeSpan);
        created.Set();
        await stopped.Task.WaitAsync(s_timeout);
        Stopwatch.GetElapsedTime(Volatile.Read(ref rearmedAt), Volatile.Read(ref secondAt)).Should().BeGreaterThanOrEqualTo(period, "the re-arm from the callback is measured from that Change");
        await Task.Delay(100);

        // A firing queued before the stop may still run, whenever the ThreadPool gets to it: more than 100 ms later on a
        // loaded machine, where it then moved the count read as settled. Read once nothing of the timer is queued or running.
        _ = TimerCallbacks.WaitUntilIdle(s_timeout, timer);
        int settled = Volatile.Read(ref calls);
        await Task.Delay(200);
        Volatile.Read(ref calls).Should().Be(settled, "stopped from its own callback, the made-periodic timer stays stopped");
        settled.Should().BeLessThanOrEqualTo(9, "at most one firing already queued when the stop was made");
        await timer.DisposeAsync().AsTask().WaitAsync(s_timeout);
    }

    [Fact]
    public async Task DisposeAsync_started_inside_the_timers_own_callback_completes_once_that_callback_returns()
    {
        using var wheel = new TimerWheel();
        int calls = 0;
        int afterDispose = 0;
        int disposeStarted = 0;
        var disposal = new TaskCompletionSource<Task>(TaskCreationOptions.RunContinuationsAsynchronously);
        using var release = new ManualResetEventSlim();
        var created = new ManualResetEventSlim();
        ITimer? timer = null;
        timer = wheel.CreateTimer(
            _ =>
            {
                created.Wait();
                if (Volatile.Read(ref disposeStarted) != 0)
                {
                    Interlocked.Increment(ref afterDispose);
                    return;
                }

                if (Interlocked.Increment(ref calls) == 3)
                {
                    Volatile.Write(ref disposeStarted, 1);
                    Task pending = timer!.DisposeAsync().AsTask();
                    disposal.TrySetResult(pending);

                    // Still inside the callback: the disposal must not be complete yet (this callback is running).
                    release.Wait(s_timeout);
                }
            },
            null,
            TimeSpan.FromMilliseconds(1),
            TimeSpan.FromMilliseconds(1));
        created.Set();
        Task disposeTask = await disposal.Task.WaitAsync(s_timeout);
        await Task.Delay(30);
        disposeTask.IsCompleted.Should().BeFalse("the callback that called DisposeAsync is still running");
        release.Set();
        await disposeTask.WaitAsync(s_timeout);
        await Task.Delay(100);
        Volatile.Read(ref afterDispose).Should().BeLessThanOrEqualTo(1, "at most a firing already past its check when Dispose was called");
        int settled = Volatile.Read(ref calls) + Volatile.Read(ref afterDispose);
        await Task.Delay(150);
        (Volatile.Read(ref calls) + Volatile.Read(ref afterDispose)).Should().Be(settled, "nothing starts after the disposal completed");
    }

    [Fact]
    public async Task A_periodic_callback_that_outlasts_its_period_does_not_hold_back_the_next_firings_and_DisposeAsync_waits_for_all()
    {
        // docs/timers.md: "the next due time is measured from the firing ... callbacks may overlap if one outlasts the
        // period". A blocked callback must not stop the cadence; DisposeAsync waits for every running callback.
        using var wheel = new TimerWheel();
        using var release = new ManualResetEventSlim();
        int calls = 0;
        int running = 0;
        int maxRunning = 0;
        using ITimer timer = wheel.CreateTimer(
            _ =>
            {
                int now = Interlocked.Increment(ref running);
                InterlockedMax(ref maxRunning, now);
                int n = Interlocked.Increment(ref calls);
                if (n == 1)
                {
                    release.Wait(s_timeout);
                }

                Interlocked.Decrement(ref running);
            },
            null,
            TimeSpan.FromMilliseconds(1),
            TimeSpan.FromMilliseconds(5));
        SpinWait.SpinUntil(() => Volatile.Read(ref calls) >= 6, s_timeout).Should().BeTrue("firings go on while the first callback is blocked");
        Volatile.Read(ref maxRunning).Should().BeGreaterThanOrEqualTo(2, "a later firing ran while the first one was still blocked");
        Task disposed = timer.DisposeAsync().AsTask();
        await Task.Delay(50);
        disposed.IsCompleted.Should().BeFalse("the first callback is still blocked");
        release.Set();
        await disposed.WaitAsync(s_timeout);
        Volatile.Read(ref running).Should().Be(0, "DisposeAsync completes only when no callback of the timer runs");
    }

    [Fact]
    public async Task PeriodicTimer_Period_shortened_while_a_wait_is_pending_ticks_by_the_new_period_and_lengthened_stops_ticking()
    {
        using var wheel = new TimerWheel();
        using var ticker = new PeriodicTimer(TimeSpan.FromHours(1), wheel);
        Task<bool> wait = ticker.WaitForNextTickAsync().AsTask();
        await Task.Delay(20);
        wait.IsCompleted.Should().BeFalse();
        long changed = Stopwatch.GetTimestamp();
        ticker.Period = TimeSpan.FromMilliseconds(20);
        (await wait.WaitAsync(s_timeout)).Should().BeTrue();
        Stopwatch.GetElapsedTime(changed).Should().BeGreaterThanOrEqualTo(TimeSpan.FromMilliseconds(20), "never early of the new period");
        for (int i = 0; i < 3; i++)
        {
            (await ticker.WaitForNextTickAsync().AsTask().WaitAsync(s_timeout)).Should().BeTrue("it keeps ticking by the new period");
        }

        // Back to an hour: at most a tick that was already signalled, then nothing.
        ticker.Period = TimeSpan.FromHours(1);
        int ticks = 0;
        using (var window = new CancellationTokenSource(TimeSpan.FromMilliseconds(300)))
        {
            try
            {
                while (await ticker.WaitForNextTickAsync(window.Token))
                {
                    ticks++;
                }
            }
            catch (OperationCanceledException)
            {
            }
        }

        ticks.Should().BeLessThanOrEqualTo(1, "lengthened to an hour, the ticker stops ticking");
        ticker.Dispose();
        (await ticker.WaitForNextTickAsync().AsTask().WaitAsync(s_timeout)).Should().BeFalse();
    }

    [Fact]
    public async Task PeriodicTimer_waits_canceled_racing_ticks_and_a_Dispose_racing_a_wait_all_end_and_the_ticker_keeps_working()
    {
        using var wheel = new TimerWheel();
        using var ticker = new PeriodicTimer(TimeSpan.FromMilliseconds(1), wheel);
        int ticked = 0;
        int canceled = 0;
        int rounds = 0;
        await Task.Run(async () =>
        {
            // At least 300 rounds, and on until both outcomes were seen (bounded): the ticks are ThreadPool callbacks, and
            // a 134-ms storm in the full suite saw none (most likely while other tests held the pool's threads).
            var random = new Random(7);
            var storm = Stopwatch.StartNew();
            for (; rounds < 300 || ((ticked == 0 || canceled == 0) && storm.Elapsed < TimeSpan.FromSeconds(10)); rounds++)
            {
                using var cts = new CancellationTokenSource();
                ValueTask<bool> wait = ticker.WaitForNextTickAsync(cts.Token);
                Thread.SpinWait(random.Next(0, 20_000));
                cts.Cancel();
                try
                {
                    (await wait).Should().BeTrue();
                    ticked++;
                }
                catch (OperationCanceledException)
                {
                    canceled++;
                }
            }
        }).WaitAsync(TimeSpan.FromSeconds(20));
        (ticked + canceled).Should().Be(rounds);
        ticked.Should().BePositive("some waits see their tick before the cancellation");
        for (int i = 0; i < 3; i++)
        {
            (await ticker.WaitForNextTickAsync().AsTask().WaitAsync(s_timeout)).Should().BeTrue("the ticker still ticks after the cancellation storm");
        }

        // Dispose racing a pending wait: the wait ends (true for a tick that won, else false), never hangs.
        for (int round = 0; round < 50; round++)
        {
            var racer = new PeriodicTimer(TimeSpan.FromMilliseconds(1), wheel);
            Task<bool> wait = racer.WaitForNextTickAsync().AsTask();
            Thread.SpinWait(round * 500);
            racer.Dispose();
            await wait.WaitAsync(s_timeout);
            (await racer.WaitForNextTickAsync().AsTask().WaitAsync(s_timeout)).Should().BeFalse("disposed");
        }
    }

    [Fact]
    public async Task CancellationTokenSource_over_the_wheel_CancelAfter_zero_cancels_at_once_TryReset_refuses_and_a_CancelAfter_storm_ends_with_the_last()
    {
        using var wheel = new TimerWheel();

        using (var cts = new CancellationTokenSource(Timeout.InfiniteTimeSpan, wheel))
        {
            cts.CancelAfter(TimeSpan.Zero);
            SpinWait.SpinUntil(() => cts.IsCancellationRequested, s_timeout).Should().BeTrue("CancelAfter(0) cancels at once");
        }

        using (var cts = new CancellationTokenSource(TimeSpan.FromHours(1), wheel))
        {
            // docs/timers.md: TryReset refuses any TimeProvider but the system one; the timeout still stands.
            cts.TryReset().Should().BeFalse();

            // Read before CancelAfter, which fixes the deadline: a stall between the two (a preemption, a GC) would
            // count toward the 15 ms without counting toward the elapsed time measured from a later reading.
            long start = Stopwatch.GetTimestamp();
            cts.CancelAfter(TimeSpan.FromMilliseconds(15));
            var canceled = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            using CancellationTokenRegistration registration = cts.Token.Register(() => canceled.TrySetResult());
            await canceled.Task.WaitAsync(s_timeout);
            Stopwatch.GetElapsedTime(start).Should().BeGreaterThanOrEqualTo(TimeSpan.FromMilliseconds(15));
        }

        // Many sources re-armed from several threads at once (short arms, relative arms, disarms), then one final
        // disarm per source: none may cancel afterwards; then a final short arm cancels each exactly at or after it.
        CancellationTokenSource[] sources;
        for (int attempt = 1; ; attempt++)
        {
            sources = Enumerable.Range(0, 64).Select(_ => new CancellationTokenSource(Timeout.InfiniteTimeSpan, wheel)).ToArray();
            CancellationTokenSource[] stormed = sources;
            await Task.WhenAll(Enumerable.Range(0, 3).Select(t => Task.Run(() =>
            {
                var random = new Random(t + 100);
                for (int i = 0; i < 30_000; i++)
                {
                    CancellationTokenSource cts = stormed[random.Next(stormed.Length)];
                    cts.CancelAfter(random.Next(4) switch
                    {
                        0 => TimeSpan.FromMilliseconds(random.Next(30, 60)),
                        1 => TimeSpan.FromSeconds(random.Next(1, 3)),
                        2 => Timeout.InfiniteTimeSpan,
                        _ => TimeSpan.FromMilliseconds(200 + random.Next(100)),
                    });
                }
            }))).WaitAsync(TimeSpan.FromSeconds(20));
            foreach (CancellationTokenSource cts in sources)
            {
                cts.CancelAfter(Timeout.InfiniteTimeSpan);
            }

            // A short arm (30-60 ms) that stood for its whole due time before the final disarm fires, as it may: every
            // storm thread, or this one on its way from the storm to the disarm, stalled that long (preempted on a
            // loaded machine, or waiting for a thread to run the continuation above). Such an attempt proves nothing
            // about the disarm and is repeated with fresh sources; the check that matters comes after the disarm.
            if (sources.All(s => !s.IsCancellationRequested))
            {
                break;
            }

            foreach (CancellationTokenSource cts in sources)
            {
                cts.Dispose();
            }

            attempt.Should().BeLessThan(10, "a short arm of the storm fired before the final disarm in every attempt");
        }

        await Task.Delay(600);
        sources.Count(s => s.IsCancellationRequested).Should().Be(0, "the final disarm wins over every arm of the storm");

        long armed = Stopwatch.GetTimestamp();
        var cancelledAt = new long[sources.Length];
        var registrations = sources.Select((s, i) => s.Token.Register(() => Volatile.Write(ref cancelledAt[i], Stopwatch.GetTimestamp()))).ToArray();
        foreach (CancellationTokenSource cts in sources)
        {
            cts.CancelAfter(TimeSpan.FromMilliseconds(25));
        }

        SpinWait.SpinUntil(() => sources.All(s => s.IsCancellationRequested), s_timeout).Should().BeTrue("the final short arm cancels every source");
        SpinWait.SpinUntil(() => cancelledAt.All(t => Volatile.Read(ref t) != 0), s_timeout).Should().BeTrue();
        cancelledAt.Should().OnlyContain(t => Stopwatch.GetElapsedTime(armed, t) >= TimeSpan.FromMilliseconds(25), "never early");
        foreach (CancellationTokenRegistration registration in registrations)
        {
            registration.Dispose();
        }

        foreach (CancellationTokenSource cts in sources)
        {
            cts.Dispose();
        }
    }

    [Fact]
    public async Task Task_Delay_and_WaitAsync_over_the_wheel_at_their_argument_boundaries()
    {
        using var wheel = new TimerWheel();
        TimeSpan longest = TimeSpan.FromMilliseconds(uint.MaxValue - 1);

        // The BCL validates before the provider sees anything; the wheel must not change that.
        FluentActions.Invoking(() => { _ = Task.Delay(TimeSpan.FromMilliseconds(-2), wheel); }).Should().Throw<ArgumentOutOfRangeException>();
        FluentActions.Invoking(() => { _ = Task.Delay(longest + TimeSpan.FromMilliseconds(1), wheel); }).Should().Throw<ArgumentOutOfRangeException>();
        Task.Delay(TimeSpan.Zero, wheel).IsCompletedSuccessfully.Should().BeTrue();

        using var cts = new CancellationTokenSource();
        Task longDelay = Task.Delay(longest, wheel, cts.Token);
        Task infiniteDelay = Task.Delay(Timeout.InfiniteTimeSpan, wheel, cts.Token);
        Task<int> longWait = new TaskCompletionSource<int>().Task.WaitAsync(longest, wheel, cts.Token);

        // Short ones around a tick: never early.
        var shorts = new[] { TimeSpan.FromTicks(1), TimeSpan.FromTicks(9_999), TimeSpan.FromMilliseconds(1), TimeSpan.FromTicks(10_001), TimeSpan.FromMilliseconds(7.5) };
        long start = Stopwatch.GetTimestamp();
        var ends = await Task.WhenAll(shorts.Select(async d =>
        {
            await Task.Delay(d, wheel);
            return Stopwatch.GetTimestamp();
        })).WaitAsync(s_timeout);
        for (int i = 0; i < shorts.Length; i++)
        {
            // Task.Delay hands the provider whole milliseconds (truncated), as it validates them.
            Stopwatch.GetElapsedTime(start, ends[i]).Should().BeGreaterThanOrEqualTo(WholeMilliseconds(shorts[i]), $"Task.Delay({shorts[i]}) is never early");
        }

        await Task.Delay(50);
        longDelay.IsCompleted.Should().BeFalse("uint.MaxValue - 1 ms is 49.7 days");
        infiniteDelay.IsCompleted.Should().BeFalse();
        longWait.IsCompleted.Should().BeFalse();
        cts.Cancel();
        await FluentActions.Awaiting(() => longDelay.WaitAsync(s_timeout)).Should().ThrowAsync<TaskCanceledException>();
        await FluentActions.Awaiting(() => infiniteDelay.WaitAsync(s_timeout)).Should().ThrowAsync<TaskCanceledException>();
        await FluentActions.Awaiting(() => longWait.WaitAsync(s_timeout)).Should().ThrowAsync<TaskCanceledException>();

        // A short WaitAsync timeout on a task that never completes: TimeoutException, not early.
        start = Stopwatch.GetTimestamp();
        await FluentActions.Awaiting(() => new TaskCompletionSource().Task.WaitAsync(TimeSpan.FromMilliseconds(3), wheel).WaitAsync(s_timeout))
            .Should().ThrowAsync<TimeoutException>();
        Stopwatch.GetElapsedTime(start).Should().BeGreaterThanOrEqualTo(TimeSpan.FromMilliseconds(3));
    }

    [Fact]
    public async Task DelayAsync_at_its_argument_boundaries()
    {
        using var wheel = new TimerWheel();
        FluentActions.Invoking(() => wheel.DelayAsync(TimeSpan.FromTicks(-10_001))).Should().Throw<ArgumentOutOfRangeException>().WithParameterName("delay");
        FluentActions.Invoking(() => wheel.DelayAsync(TimeSpan.FromTicks(-9_999))).Should().Throw<ArgumentOutOfRangeException>("only Timeout.InfiniteTimeSpan itself is a negative DelayAsync accepts");

        using var cts = new CancellationTokenSource();
        Task longest = wheel.DelayAsync(TimeSpan.FromMilliseconds(uint.MaxValue - 1), cts.Token).AsTask();
        Task beyond = wheel.DelayAsync(TimeSpan.FromMilliseconds(uint.MaxValue), cts.Token).AsTask();
        Task huge = wheel.DelayAsync(TimeSpan.MaxValue - TimeSpan.FromTicks(1), cts.Token).AsTask();
        long start = Stopwatch.GetTimestamp();
        await wheel.DelayAsync(TimeSpan.FromMilliseconds(1) - TimeSpan.FromTicks(1)).AsTask().WaitAsync(s_timeout);
        Stopwatch.GetElapsedTime(start).Should().BeGreaterThanOrEqualTo(TimeSpan.FromMilliseconds(1) - TimeSpan.FromTicks(1));
        await Task.Delay(50);
        new[] { longest, beyond, huge }.Should().OnlyContain(t => !t.IsCompleted);
        cts.Cancel();
        foreach (Task t in new[] { longest, beyond, huge })
        {
            (await FluentActions.Awaiting(() => t.WaitAsync(s_timeout)).Should().ThrowAsync<OperationCanceledException>()).Which.CancellationToken.Should().Be(cts.Token);
        }
    }

    [Theory]
    [InlineData(1L)] // 100 ns: the smallest tick; the span is under two hours
    [InlineData(3_333L)] // a third of a millisecond: does not divide a millisecond
    [InlineData(70_000L)] // 7 ms
    [InlineData(2_500_000L)] // 250 ms
    public async Task A_wheel_with_an_odd_tick_serves_every_TimeProvider_consumer_never_early_and_about_a_tick_late(long tickTicks)
    {
        TimeSpan tick = TimeSpan.FromTicks(tickTicks);
        long beforeCreation = Stopwatch.GetTimestamp();
        using var wheel = new TimerWheel(tick);
        wheel.TickDuration.Should().Be(tick);
        // Generous: a shared, loaded machine holds a thread off its core for seconds (3.45 s measured in a CI run), and the
        // Task.Delay and DelayAsync readings come after the test's own resumption. Still under one level-1 slot of the
        // 250 ms wheel (64 ticks, 16 s).
        TimeSpan slack = tick + TimeSpan.FromSeconds(10);
        TimeSpan[] dues = { TimeSpan.FromTicks(1), TimeSpan.FromMilliseconds(3), TimeSpan.FromMilliseconds(20), tick, tick + TimeSpan.FromTicks(1), TimeSpan.FromMilliseconds(260), TimeSpan.FromSeconds(1.05) };

        // Far ones, past the span of a 100 ns wheel (2^36 ticks, under two hours): they must not fire during the test.
        int farFired = 0;
        var far = new[] { TimeSpan.FromHours(1.9), TimeSpan.FromHours(2), TimeSpan.FromHours(3.9), TimeSpan.FromDays(1), TimeSpan.FromDays(40) }
            .Select(d => wheel.CreateTimer(_ => Interlocked.Increment(ref farFired), null, d, d)).ToList();
        var results = await Task.WhenAll(dues.SelectMany(due => new Func<Task<(string Kind, TimeSpan Due, TimeSpan Took, long End)>>[]
        {
            async () =>
            {
                long s = Stopwatch.GetTimestamp();
                await Task.Delay(due, wheel);
                long e = Stopwatch.GetTimestamp();

                // Task.Delay hands the provider whole milliseconds (truncated), as it validates them.
                return ("Task.Delay", WholeMilliseconds(due), Stopwatch.GetElapsedTime(s, e), e);
            },
            async () =>
            {
                long s = Stopwatch.GetTimestamp();
                await wheel.DelayAsync(due);
                long e = Stopwatch.GetTimestamp();
                return ("DelayAsync", due, Stopwatch.GetElapsedTime(s, e), e);
            },
            async () =>
            {
                // Read in the callback: the resumption after the await below is a ThreadPool hop of the test's own, which
                // a loaded run can hand out seconds late.
                long s = Stopwatch.GetTimestamp();
                using var cts = new CancellationTokenSource(due, wheel);
                var done = new TaskCompletionSource<long>(TaskCreationOptions.RunContinuationsAsynchronously);
                using CancellationTokenRegistration r = cts.Token.Register(() => done.TrySetResult(Stopwatch.GetTimestamp()));
                long e = await done.Task;
                return ("CancellationTokenSource", WholeMilliseconds(due), Stopwatch.GetElapsedTime(s, e), e);
            },
            async () =>
            {
                // Read in the callback, as above.
                long s = Stopwatch.GetTimestamp();
                var done = new TaskCompletionSource<long>(TaskCreationOptions.RunContinuationsAsynchronously);
                using ITimer timer = wheel.CreateTimer(_ => done.TrySetResult(Stopwatch.GetTimestamp()), null, due, Timeout.InfiniteTimeSpan);
                long e = await done.Task;
                return ("ITimer", due, Stopwatch.GetElapsedTime(s, e), e);
            },
        }).Select(f => Task.Run(f))).WaitAsync(TimeSpan.FromSeconds(20));

        foreach (var (kind, due, took, end) in results)
        {
            took.Should().BeGreaterThanOrEqualTo(due, $"{kind}({due}) on a {tick} tick is never early");
            took.Should().BeLessThan(due + slack, $"{kind}({due}) on a {tick} tick is late by about a tick at most");

            // Deadlines are rounded up to tick boundaries counted from the wheel's creation: a wait the wheel timed
            // ends no earlier than the first boundary.
            if (due > TimeSpan.Zero)
            {
                Stopwatch.GetElapsedTime(beforeCreation, end).Should().BeGreaterThanOrEqualTo(tick, $"{kind}({due}) rounds up to the first {tick} boundary");
            }
        }

        // Read before the timer is created: its first deadline is measured from inside the constructor, and a stall
        // between the constructor and a reading taken after it (a preemption, a GC) would count toward the first
        // period without counting toward the elapsed time, so that the third tick could come less than three periods
        // after such a reading with nothing early about it.
        long tickerStart = Stopwatch.GetTimestamp();
        using var ticker = new PeriodicTimer(TimeSpan.FromMilliseconds(2) > tick ? TimeSpan.FromMilliseconds(2) : tick, wheel);
        for (int i = 0; i < 3; i++)
        {
            (await ticker.WaitForNextTickAsync().AsTask().WaitAsync(s_timeout)).Should().BeTrue();
        }

        Stopwatch.GetElapsedTime(tickerStart).Should().BeGreaterThanOrEqualTo(3 * ticker.Period);
        Volatile.Read(ref farFired).Should().Be(0, "timers hours and days away never fire within seconds");
        far.ForEach(t => t.Dispose());
    }

    [Fact]
    public async Task A_one_hour_tick_wheel_rounds_every_deadline_up_to_the_hour_but_fires_a_zero_due_time_at_once()
    {
        using var wheel = new TimerWheel(TimeSpan.FromHours(1));
        var now = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        int early = 0;
        using ITimer immediate = wheel.CreateTimer(_ => now.TrySetResult(), null, TimeSpan.Zero, Timeout.InfiniteTimeSpan);
        using ITimer shortOne = wheel.CreateTimer(_ => Interlocked.Increment(ref early), null, TimeSpan.FromMilliseconds(5), Timeout.InfiniteTimeSpan);
        using ITimer relative = wheel.CreateTimer(_ => Interlocked.Increment(ref early), null, TimeSpan.FromSeconds(1), Timeout.InfiniteTimeSpan);
        using var cts = new CancellationTokenSource(TimeSpan.FromMilliseconds(5), wheel);
        Task delay = wheel.DelayAsync(TimeSpan.FromMilliseconds(5)).AsTask();
        Task bclDelay = Task.Delay(TimeSpan.FromMilliseconds(5), wheel);
        await now.Task.WaitAsync(s_timeout);
        await Task.Delay(300);
        Volatile.Read(ref early).Should().Be(0, "a 5 ms deadline rounds up to the first one-hour boundary");
        cts.IsCancellationRequested.Should().BeFalse();
        delay.IsCompleted.Should().BeFalse();
        bclDelay.IsCompleted.Should().BeFalse();

        // Change to zero still fires at once, whatever the tick.
        var fired = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        using ITimer later = wheel.CreateTimer(_ => fired.TrySetResult(), null, Timeout.InfiniteTimeSpan, Timeout.InfiniteTimeSpan);
        later.Change(TimeSpan.Zero, Timeout.InfiniteTimeSpan).Should().BeTrue();
        await fired.Task.WaitAsync(s_timeout);

        await Task.Run(wheel.Dispose).WaitAsync(s_timeout);
        await FluentActions.Awaiting(() => delay.WaitAsync(s_timeout)).Should().ThrowAsync<ObjectDisposedException>();
    }

    [Fact]
    public void Tick_durations_out_of_range_throw_ArgumentOutOfRangeException_naming_tickDuration()
    {
        foreach (TimeSpan bad in new[] { TimeSpan.MinValue, Timeout.InfiniteTimeSpan, TimeSpan.FromTicks(-1), TimeSpan.Zero, TimeSpan.FromHours(1) + TimeSpan.FromTicks(1), TimeSpan.FromDays(1), TimeSpan.MaxValue })
        {
            FluentActions.Invoking(() => new TimerWheel(bad).Dispose()).Should().Throw<ArgumentOutOfRangeException>($"tick {bad}").WithParameterName("tickDuration");
        }

        using var smallest = new TimerWheel(TimeSpan.FromTicks(1));
        smallest.TickDuration.Should().Be(TimeSpan.FromTicks(1));
    }

    [Fact]
    public async Task GetTimestamp_GetElapsedTime_and_GetUtcNow_agree_with_Stopwatch_and_the_system_clock_across_threads_and_after_Dispose()
    {
        var wheel = new TimerWheel(TimeSpan.FromMilliseconds(3));
        wheel.TimestampFrequency.Should().Be(Stopwatch.Frequency);
        long violations = 0;
        await Task.WhenAll(Enumerable.Range(0, 3).Select(_ => Task.Run(() =>
        {
            long last = wheel.GetTimestamp();
            for (int i = 0; i < 100_000; i++)
            {
                long sw = Stopwatch.GetTimestamp();
                long ours = wheel.GetTimestamp();
                long sw2 = Stopwatch.GetTimestamp();
                if (ours < last || ours < sw || ours > sw2)
                {
                    Interlocked.Increment(ref violations);
                }

                last = ours;
            }
        }))).WaitAsync(s_timeout);
        Interlocked.Read(ref violations).Should().Be(0, "the wheel's timestamps are Stopwatch's: monotonic and bracketed");

        long a = wheel.GetTimestamp();
        long b = a + Stopwatch.Frequency * 3 / 2;
        wheel.GetElapsedTime(a, b).Should().Be(Stopwatch.GetElapsedTime(a, b));
        wheel.GetElapsedTime(b, a).Should().Be(Stopwatch.GetElapsedTime(b, a), "negative spans too");
        wheel.GetElapsedTime(a).Should().BeGreaterThanOrEqualTo(TimeSpan.Zero);

        DateTimeOffset before = DateTimeOffset.UtcNow;
        DateTimeOffset ourNow = wheel.GetUtcNow();
        DateTimeOffset after = DateTimeOffset.UtcNow;
        ourNow.Offset.Should().Be(TimeSpan.Zero);
        ourNow.Should().BeOnOrAfter(before).And.BeOnOrBefore(after);
        wheel.GetLocalNow().Offset.Should().Be(TimeZoneInfo.Local.GetUtcOffset(ourNow));

        wheel.Dispose();
        long afterDispose = wheel.GetTimestamp();
        afterDispose.Should().BeGreaterThanOrEqualTo(a);
        wheel.GetElapsedTime(a).Should().BeGreaterThanOrEqualTo(TimeSpan.Zero, "the clock keeps working after Dispose");
        wheel.GetUtcNow().Should().BeOnOrAfter(before);
    }

    [Fact]
    public async Task Throwing_callbacks_in_one_batch_do_not_hold_back_their_neighbours_and_a_thrower_still_disposes_cleanly()
    {
        UnhandledExceptions.EnsureInstalled();
        using var wheel = new TimerWheel();
        const int Count = 200;
        int good = 0;
        int bad = 0;
        var exceptions = new List<DeliberateTimerException>();
        var allGood = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var timers = new List<ITimer>();
        var asyncLocal = new AsyncLocal<string?>();
        for (int i = 0; i < Count; i++)
        {
            if (i % 2 == 0)
            {
                var thrown = new DeliberateTimerException($"thrower {i}");
                exceptions.Add(thrown);

                // Half of them in a captured (non-default) context: the exception also leaves ExecutionContext.Run.
                asyncLocal.Value = i % 4 == 0 ? "captured" : null;
                timers.Add(wheel.CreateTimer(
                    _ =>
                    {
                        Interlocked.Increment(ref bad);
                        throw thrown;
                    },
                    null,
                    TimeSpan.FromMilliseconds(20),
                    Timeout.InfiniteTimeSpan));
                asyncLocal.Value = null;
            }
            else
            {
                timers.Add(wheel.CreateTimer(
                    _ =>
                    {
                        if (Interlocked.Increment(ref good) == Count / 2)
                        {
                            allGood.TrySetResult();
                        }
                    },
                    null,
                    TimeSpan.FromMilliseconds(20),
                    Timeout.InfiniteTimeSpan));
            }
        }

        await allGood.Task.WaitAsync(s_timeout);
        SpinWait.SpinUntil(() => Volatile.Read(ref bad) == Count / 2, s_timeout).Should().BeTrue("every thrower ran once");
        SpinWait.SpinUntil(() => exceptions.All(UnhandledExceptions.Contains), s_timeout).Should().BeTrue(
            "each exception goes unhandled on its ThreadPool thread, as from a System.Threading.Timer callback");

        // DisposeAsync of a timer whose callback threw: the running count went back to zero.
        foreach (ITimer timer in timers)
        {
            await timer.DisposeAsync().AsTask().WaitAsync(s_timeout);
        }

        // The wheel and the ThreadPool threads that ran throwers are sound: a default-context timer sees no leaked context.
        string? seen = "unset";
        var fired = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        using ITimer after = wheel.CreateTimer(
            _ =>
            {
                seen = asyncLocal.Value;
                fired.TrySetResult();
            },
            null,
            TimeSpan.FromMilliseconds(1),
            Timeout.InfiniteTimeSpan);
        await fired.Task.WaitAsync(s_timeout);
        seen.Should().BeNull("a thrower's captured context does not leak into later callbacks");
    }

    [Fact]
    public async Task A_periodic_thrower_keeps_its_cadence_and_Change_and_DisposeAsync_from_another_thread_still_work()
    {
        UnhandledExceptions.EnsureInstalled();
        using var wheel = new TimerWheel();
        int calls = 0;
        using ITimer timer = wheel.CreateTimer(
            _ =>
            {
                Interlocked.Increment(ref calls);
                throw new DeliberateTimerException("periodic thrower");
            },
            null,
            TimeSpan.FromMilliseconds(1),
            TimeSpan.FromMilliseconds(2));
        SpinWait.SpinUntil(() => Volatile.Read(ref calls) >= 5, s_timeout).Should().BeTrue("a periodic timer goes on after its callback threw");
        timer.Change(Timeout.InfiniteTimeSpan, Timeout.InfiniteTimeSpan).Should().BeTrue();
        await Task.Delay(100);

        // A firing queued before the stop may still run, later than 100 ms on a loaded machine: settled once none is queued or running.
        _ = TimerCallbacks.WaitUntilIdle(s_timeout, timer);
        int settled = Volatile.Read(ref calls);
        await Task.Delay(150);
        Volatile.Read(ref calls).Should().Be(settled, "stopped");
        long start = Stopwatch.GetTimestamp();
        timer.Change(TimeSpan.FromMilliseconds(10), Timeout.InfiniteTimeSpan).Should().BeTrue();
        SpinWait.SpinUntil(() => Volatile.Read(ref calls) == settled + 1, s_timeout).Should().BeTrue();
        Stopwatch.GetElapsedTime(start).Should().BeGreaterThanOrEqualTo(TimeSpan.FromMilliseconds(10));
        await timer.DisposeAsync().AsTask().WaitAsync(s_timeout);
    }

    [Fact]
    public async Task Disposing_a_timer_from_its_callback_while_another_thread_changes_it_never_revives_it()
    {
        using var wheel = new TimerWheel();
        int revived = 0;
        for (int round = 0; round < 40; round++)
        {
            int disposed = 0;
            int callsAfter = 0;
            using var done = new ManualResetEventSlim();
            ITimer? timer = null;
            var created = new ManualResetEventSlim();
            timer = wheel.CreateTimer(
                _ =>
                {
                    created.Wait();
                    if (Volatile.Read(ref disposed) != 0)
                    {
                        Interlocked.Increment(ref callsAfter);
                        return;
                    }

                    Volatile.Write(ref disposed, 1);
                    timer!.Dispose();
                    done.Set();
                },
                null,
                TimeSpan.FromMilliseconds(1),
                TimeSpan.FromMilliseconds(1));
            created.Set();
            Task changer = Task.Run(() =>
            {
                while (!done.IsSet)
                {
                    timer.Change(TimeSpan.Zero, TimeSpan.FromMilliseconds(1));
                }

                // After the disposal: every change reports it, nothing re-arms.
                for (int i = 0; i < 100; i++)
                {
                    if (timer.Change(TimeSpan.Zero, TimeSpan.FromMilliseconds(1)))
                    {
                        Interlocked.Increment(ref revived);
                    }
                }
            });
            await changer.WaitAsync(s_timeout);
            await timer.DisposeAsync().AsTask().WaitAsync(s_timeout);
            int settled = Volatile.Read(ref callsAfter);
            await Task.Delay(20);
            Volatile.Read(ref callsAfter).Should().Be(settled, $"round {round}: no callback starts after DisposeAsync completed");
        }

        Volatile.Read(ref revived).Should().Be(0, "Change after Dispose returns false");
    }

    [Fact]
    public async Task Statistics_after_Dispose_count_every_task_the_disposal_drained_and_stay_put()
    {
        var scheduler = SchedulerTestHelpers.CreateWithoutCompensation(1);
        using var gate = new ManualResetEventSlim();
        using var running = new ManualResetEventSlim();
        Task blocker = scheduler.Factory.StartNew(() =>
        {
            running.Set();
            gate.Wait(SchedulerTestHelpers.Timeout);
        });
        running.Wait(SchedulerTestHelpers.Timeout).Should().BeTrue();
        const int Queued = 100;
        int ran = 0;
        Task[] queued = Enumerable.Range(0, Queued).Select(_ => scheduler.Factory.StartNew(() => Interlocked.Increment(ref ran))).ToArray();
        scheduler.GetStatistics().QueuedTasks.Should().Be(Queued);

        // Dispose while the queue is full: it stops intake and runs everything already queued.
        Task disposer = Task.Factory.StartNew(scheduler.Dispose, CancellationToken.None, TaskCreationOptions.LongRunning, TaskScheduler.Default);
        await Task.Delay(20);
        gate.Set();
        await disposer.WaitAsync(SchedulerTestHelpers.Timeout);
        await Task.WhenAll(queued.Append(blocker)).WaitAsync(s_timeout);
        Volatile.Read(ref ran).Should().Be(Queued);

        SchedulerStatistics final = scheduler.GetStatistics();
        (final.TasksExecuted + final.TasksInlined).Should().Be(Queued + 1, "the drained tasks are counted: Dispose joined the workers");
        final.QueuedTasks.Should().Be(0);
        final.WorkerWakeups.Should().BeLessThanOrEqualTo(final.WorkerParks);
        scheduler.GetStatistics().Should().Be(final, "a disposed scheduler's counters no longer move");
    }

    [Fact]
    public async Task Counters_sampled_through_a_Dispose_that_drains_never_go_back_and_the_queue_is_never_negative()
    {
        var scheduler = SchedulerTestHelpers.Create(2, spin: 0);
        var snapshots = new ConcurrentQueue<SchedulerStatistics>();
        using var stop = new CancellationTokenSource();
        var sampler = new Thread(() =>
        {
            while (!stop.IsCancellationRequested)
            {
                snapshots.Enqueue(scheduler.GetStatistics());
                Thread.SpinWait(200);
            }
        });
        sampler.Start();

        // Fan-out work that keeps spawning while the disposal drains.
        int done = 0;
        Task[] roots = Enumerable.Range(0, 200).Select(_ => scheduler.Factory.StartNew(() =>
        {
            for (int i = 0; i < 20; i++)
            {
                Task.Factory.StartNew(() => Interlocked.Increment(ref done), CancellationToken.None, TaskCreationOptions.None, scheduler);
            }

            Thread.SpinWait(500);
        })).ToArray();
        await scheduler.DisposeAsync().AsTask().WaitAsync(SchedulerTestHelpers.Timeout);
        await Task.WhenAll(roots).WaitAsync(s_timeout);
        await Task.Delay(20);
        stop.Cancel();
        sampler.Join();

        SchedulerStatistics final = scheduler.GetStatistics();
        Volatile.Read(ref done).Should().Be(200 * 20, "work spawned by running tasks is still run by the drain");
        (final.TasksExecuted + final.TasksInlined).Should().Be(200 + (200 * 20));
        final.QueuedTasks.Should().Be(0);
        snapshots.Enqueue(final);
        SchedulerStatistics[] all = snapshots.ToArray();
        var problems = new List<string>();
        for (int i = 1; i < all.Length; i++)
        {
            SchedulerStatistics before = all[i - 1], after = all[i];
            if (after.TasksExecuted < before.TasksExecuted || after.TasksInlined < before.TasksInlined || after.TasksStolen < before.TasksStolen
                || after.WorkerParks < before.WorkerParks || after.WorkerWakeups < before.WorkerWakeups || after.QueuedTasks < 0)
            {
                problems.Add($"{before} -> {after}");
            }
        }

        problems.Should().BeEmpty();
    }

    [Fact]
    public async Task A_MeterListener_collecting_while_schedulers_come_and_go_sees_no_error_no_disposed_scheduler_and_no_counter_going_back()
    {
        const string Prefix = "AdvMeterChurn";
        var disposedAt = new ConcurrentDictionary<int, long>();
        var live = new ConcurrentDictionary<int, WorkStealingTaskScheduler>();
        var values = new ConcurrentDictionary<(int Collector, int Id, string Instrument), long>();
        var problems = new ConcurrentQueue<string>();
        using var stop = new CancellationTokenSource();

        Task churn = Task.WhenAll(Enumerable.Range(0, 2).Select(t => Task.Run(async () =>
        {
            for (int i = 0; i < 12; i++)
            {
                var scheduler = new WorkStealingTaskScheduler(new WorkStealingTaskSchedulerOptions { WorkerCount = 1, ThreadNamePrefix = Prefix });
                live[scheduler.Id] = scheduler;
                await Task.WhenAll(Enumerable.Range(0, 30).Select(_ => scheduler.Factory.StartNew(() => Thread.SpinWait(100)))).WaitAsync(s_timeout);
                if (i % 2 == 0)
                {
                    scheduler.Dispose();
                }
                else
                {
                    await scheduler.DisposeAsync().AsTask().WaitAsync(s_timeout);
                }

                disposedAt[scheduler.Id] = Stopwatch.GetTimestamp();
                live.TryRemove(scheduler.Id, out _);
            }
        })));

        // Listeners attached, collected and detached over and over while the schedulers churn.
        // Each collector compares only its own collections (two collectors' callbacks interleave out of reading order).
        Task collectors = Task.WhenAll(Enumerable.Range(0, 2).Select(collector => Task.Run(() =>
        {
            while (!churn.IsCompleted)
            {
                using var listener = new MeterListener();
                long recordStarted = 0;
                listener.InstrumentPublished = (instrument, l) =>
                {
                    if (instrument.Meter.Name == "Scheduler")
                    {
                        l.EnableMeasurementEvents(instrument);
                    }
                };
                listener.SetMeasurementEventCallback<long>((instrument, value, tags, _) =>
                {
                    string? name = null;
                    int? id = null;
                    foreach (var tag in tags)
                    {
                        if (tag.Key == "scheduler.name")
                        {
                            name = tag.Value as string;
                        }
                        else if (tag.Key == "scheduler.id")
                        {
                            id = tag.Value as int?;
                        }
                    }

                    if (name != Prefix || id is not int key)
                    {
                        return;
                    }

                    if (disposedAt.TryGetValue(key, out long disposed) && disposed < Volatile.Read(ref recordStarted))
                    {
                        problems.Enqueue($"scheduler {key} reported by {instrument.Name} in a collection started after its Dispose returned");
                    }

                    if (instrument.Name == "scheduler.tasks.queued")
                    {
                        if (value < 0)
                        {
                            problems.Enqueue($"scheduler {key}: negative queue {value}");
                        }

                        return;
                    }

                    values.AddOrUpdate(
                        (collector, key, instrument.Name),
                        value,
                        (_, previous) =>
                        {
                            if (value < previous)
                            {
                                problems.Enqueue($"scheduler {key}: {instrument.Name} went back from {previous} to {value}");
                            }

                            return Math.Max(previous, value);
                        });
                });
                listener.Start();
                for (int r = 0; r < 5; r++)
                {
                    Volatile.Write(ref recordStarted, Stopwatch.GetTimestamp());
                    listener.RecordObservableInstruments();
                }
            }
        })));

        await Task.WhenAll(churn, collectors).WaitAsync(TimeSpan.FromSeconds(30));
        problems.Should().BeEmpty();
        values.Keys.Select(k => k.Id).Distinct().Should().NotBeEmpty("the listeners saw the churning schedulers");
        live.Should().BeEmpty();
    }

    [Fact]
    public async Task Timers_cancellation_sources_and_delays_nobody_references_still_fire_through_garbage_collections()
    {
        // TimeProvider.CreateTimer: the returned timer is implicitly rooted while it is scheduled (as TimeProvider.System's
        // are): whether it waits in a nursery, on the pending stack, as a deferred relative arm or linked in the wheel.
        using var wheel = new TimerWheel();
        const int PerKind = 50;
        var counter = new StrongBox<int>();
        await Task.Run(() => StartUnreferenced(wheel, counter, PerKind)).WaitAsync(s_timeout);
        var deadline = Stopwatch.StartNew();
        while (Volatile.Read(ref counter.Value) < 4 * PerKind && deadline.Elapsed < s_timeout)
        {
            GC.Collect();
            GC.WaitForPendingFinalizers();
            await Task.Delay(10);
        }

        Volatile.Read(ref counter.Value).Should().Be(4 * PerKind, "no scheduled timer is collected before it fires");
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private static void StartUnreferenced(TimerWheel wheel, StrongBox<int> counter, int perKind)
    {
        for (int i = 0; i < perKind; i++)
        {
            // Short (absolute) and long (relative, measured by the driver) arms; the ITimer and the source are dropped.
            TimeSpan due = i % 2 == 0 ? TimeSpan.FromMilliseconds(30 + i) : TimeSpan.FromSeconds(1) + TimeSpan.FromMilliseconds(i);
            _ = wheel.CreateTimer(static s => Interlocked.Increment(ref ((StrongBox<int>)s!).Value), counter, due, Timeout.InfiniteTimeSpan);
            var cts = new CancellationTokenSource(due, wheel);
            cts.Token.UnsafeRegister(static s => Interlocked.Increment(ref ((StrongBox<int>)s!).Value), counter);
            _ = Task.Delay(due, wheel).ContinueWith(static (_, s) => Interlocked.Increment(ref ((StrongBox<int>)s!).Value), counter, CancellationToken.None, TaskContinuationOptions.ExecuteSynchronously, TaskScheduler.Default);
            ITimer disarmed = wheel.CreateTimer(static s => Interlocked.Increment(ref ((StrongBox<int>)s!).Value), counter, Timeout.InfiniteTimeSpan, Timeout.InfiniteTimeSpan);
            disarmed.Change(due, Timeout.InfiniteTimeSpan);
        }
    }

    [Fact]
    public async Task Huge_periods_fire_once_and_a_periodic_timer_changed_to_fire_now_from_its_callback_fires_once_more_and_stops()
    {
        using var wheel = new TimerWheel();
        int hugeCalls = 0;
        using ITimer maxPeriod = wheel.CreateTimer(_ => Interlocked.Increment(ref hugeCalls), null, TimeSpan.FromMilliseconds(2), TimeSpan.MaxValue);
        using ITimer uintPeriod = wheel.CreateTimer(_ => Interlocked.Increment(ref hugeCalls), null, TimeSpan.FromMilliseconds(2), TimeSpan.FromMilliseconds(uint.MaxValue - 1));
        using ITimer relativePeriod = wheel.CreateTimer(_ => Interlocked.Increment(ref hugeCalls), null, TimeSpan.Zero, TimeSpan.FromDays(3650));

        int calls = 0;
        var created = new ManualResetEventSlim();
        ITimer? timer = null;
        timer = wheel.CreateTimer(
            _ =>
            {
                created.Wait();
                if (Interlocked.Increment(ref calls) == 3)
                {
                    // As System.Threading.Timer: due now, no period: one more callback at once, then none.
                    timer!.Change(TimeSpan.Zero, Timeout.InfiniteTimeSpan).Should().BeTrue();
                }
            },
            null,
            TimeSpan.FromMilliseconds(2),
            TimeSpan.FromMilliseconds(2));
        created.Set();
        SpinWait.SpinUntil(() => Volatile.Read(ref calls) >= 4, s_timeout).Should().BeTrue("the fire-now change runs the callback once more");
        await Task.Delay(150);

        // A periodic firing queued before the change, and the huge-period timers' first callbacks, run whenever the
        // ThreadPool gets to them: later than 150 ms on a loaded machine. Settled once none is queued or running.
        _ = TimerCallbacks.WaitUntilIdle(s_timeout, timer, maxPeriod, uintPeriod, relativePeriod);
        int settled = Volatile.Read(ref calls);
        settled.Should().BeInRange(4, 5, "one fire-now callback, plus at most one periodic firing already queued");
        await Task.Delay(150);
        Volatile.Read(ref calls).Should().Be(settled, "the change dropped the period");
        Volatile.Read(ref hugeCalls).Should().Be(3, "each huge-period timer fired its first due time once and never again");
        timer.Dispose();
    }

    [Fact]
    public async Task The_reactors_wheel_serves_TimeProvider_consumers_including_relative_arms_while_the_reactor_idles()
    {
        using var scheduler = new WorkStealingTaskScheduler(1);
        using var reactor = new IoReactor(scheduler);
        TimerWheel timers = reactor.Timers;
        long start = Stopwatch.GetTimestamp();

        // 1 s and more: a relative arm, measured by the reactor's driver step, which must be woken to take it in.
        using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(1), timers);
        var canceled = new TaskCompletionSource<long>(TaskCreationOptions.RunContinuationsAsynchronously);
        using CancellationTokenRegistration registration = cts.Token.Register(() => canceled.TrySetResult(Stopwatch.GetTimestamp()));
        Task shortDelay = Task.Delay(TimeSpan.FromMilliseconds(15), timers);
        using var ticker = new PeriodicTimer(TimeSpan.FromMilliseconds(3), timers);
        for (int i = 0; i < 3; i++)
        {
            (await ticker.WaitForNextTickAsync().AsTask().WaitAsync(s_timeout)).Should().BeTrue();
        }

        Stopwatch.GetElapsedTime(start).Should().BeGreaterThanOrEqualTo(TimeSpan.FromMilliseconds(9));
        await shortDelay.WaitAsync(s_timeout);
        Stopwatch.GetElapsedTime(start).Should().BeGreaterThanOrEqualTo(TimeSpan.FromMilliseconds(15));
        long canceledAt = await canceled.Task.WaitAsync(s_timeout);
        TimeSpan took = Stopwatch.GetElapsedTime(start, canceledAt);
        took.Should().BeGreaterThanOrEqualTo(TimeSpan.FromSeconds(1));
        // Generous (the callback runs on the ThreadPool, which a loaded machine can hold off for seconds); a relative arm the
        // idle reactor never took in would not fire at all.
        took.Should().BeLessThan(TimeSpan.FromSeconds(10), "the idle reactor is woken to take the relative arm in");
    }

    [Fact]
    public async Task A_short_arm_followed_at_once_by_a_long_relative_one_never_fires_early_and_the_reverse_fires_short()
    {
        // "The last call wins" across the two kinds of arm: a short (absolute) one, then a long one (relative, measured by
        // the driver), made in every phase of the timer's life (fresh in the nursery, on the stack, linked, just claimed).
        using var wheel = new TimerWheel();
        const int Count = 120;
        var longFiredEarly = new int[Count];
        var longFiredOnTime = new int[Count];
        var longStarts = new long[Count];
        var shortFired = new int[Count];
        var timers = new List<ITimer>();
        var shortArmed = new long[Count];
        // Dedicated threads, not the ThreadPool: the loops spin, and on two pool threads they would hold back the
        // ThreadPool that runs the timers' callbacks. A callback an earlier arm had already queued (which may still run
        // once, as docs/timers.md says) then ran long after the 2 s arm and read as an early firing of it.
        Thread[] arming = Enumerable.Range(0, 2).Select(t => new Thread(() =>
        {
            var random = new Random(t + 31);
            for (int i = t; i < Count; i += 2)
            {
                int index = i;
                ITimer longLast = wheel.CreateTimer(
                    _ =>
                    {
                        long started = Volatile.Read(ref longStarts[index]);
                        if (started == 0 || Stopwatch.GetElapsedTime(started) < TimeSpan.FromSeconds(2))
                        {
                            // Before the last arm was made (started still 0), or a callback of an earlier arm run late.
                            Interlocked.Increment(ref longFiredEarly[index]);
                        }
                        else
                        {
                            Interlocked.Increment(ref longFiredOnTime[index]);
                        }
                    },
                    null,
                    i % 3 == 0 ? TimeSpan.FromMilliseconds(4) : Timeout.InfiniteTimeSpan,
                    Timeout.InfiniteTimeSpan);
                ITimer shortLast = wheel.CreateTimer(_ => Interlocked.Increment(ref shortFired[index]), null, i % 3 == 0 ? TimeSpan.FromSeconds(3) : Timeout.InfiniteTimeSpan, Timeout.InfiniteTimeSpan);
                lock (timers)
                {
                    timers.Add(longLast);
                    timers.Add(shortLast);
                }

                if (random.Next(3) == 0)
                {
                    Thread.Sleep(random.Next(0, 6));
                }

                longLast.Change(TimeSpan.FromMilliseconds(random.Next(1, 5)), Timeout.InfiniteTimeSpan);
                Thread.SpinWait(random.Next(0, 5000));
                Volatile.Write(ref longStarts[index], Stopwatch.GetTimestamp());
                longLast.Change(TimeSpan.FromSeconds(2), Timeout.InfiniteTimeSpan);

                shortLast.Change(TimeSpan.FromSeconds(2), Timeout.InfiniteTimeSpan);
                Thread.SpinWait(random.Next(0, 5000));
                Volatile.Write(ref shortArmed[index], Stopwatch.GetTimestamp());
                shortLast.Change(TimeSpan.FromMilliseconds(random.Next(1, 5)), Timeout.InfiniteTimeSpan);
            }
        })).ToArray();
        Array.ForEach(arming, thread => thread.Start());
        arming.All(thread => thread.Join(s_timeout)).Should().BeTrue();

        SpinWait.SpinUntil(() => shortFired.All(f => Volatile.Read(ref f) >= 1), s_timeout).Should().BeTrue("the short arm made last fires");
        // The 2 s arms made last fire, each once. The two earlier arms may each have fired before they were replaced, and a
        // callback one of them had already queued when the last Change came may still run once (docs/timers.md), on two
        // busy cores even after that Change. A wheel that kept an earlier arm instead of the last would never fire at 2 s.
        await Task.Delay(TimeSpan.FromSeconds(2.3));
        SpinWait.SpinUntil(() => longFiredOnTime.All(f => Volatile.Read(ref f) >= 1), s_timeout).Should().BeTrue("every 2 s arm made last fires");
        longFiredOnTime.Should().OnlyContain(f => f == 1, "each 2 s arm fires once");
        longFiredEarly.Should().OnlyContain(f => f <= 2, "only the two earlier arms (at creation, then 1-5 ms) may fire, each at most once");
        shortFired.Should().OnlyContain(f => f == 1, "each short arm made last fires once; the 2 s arm it replaced never does");
        lock (timers)
        {
            timers.ForEach(t => t.Dispose());
        }
    }

    [Fact]
    public async Task Delay_resumptions_on_a_worker_are_counted_as_executed_work_items_and_a_lone_worker_steals_nothing()
    {
        // SchedulerStatistics.TasksExecuted: "Work items run by workers (tasks, continuations, pipe callbacks, wakers)".
        using var wheel = new TimerWheel();
        var scheduler = SchedulerTestHelpers.Create(1);
        await using var disposeScheduler = SchedulerTestHelpers.DisposeWithin(scheduler);
        const int Awaits = 40;
        int offWorker = 0;
        int suspended = 0;
        await scheduler.Factory.StartNew(async () =>
        {
            for (int i = 0; i < Awaits; i++)
            {
                // A delay that is already over when awaited (its worker preempted past 1 ms on a loaded machine) resumes
                // synchronously, with no work item: a full run once counted 40 of 41.
                if (i % 2 == 0)
                {
                    ValueTask delay = wheel.DelayAsync(TimeSpan.FromMilliseconds(1));
                    suspended += delay.IsCompleted ? 0 : 1;
                    await delay;
                }
                else
                {
                    Task delay = Task.Delay(TimeSpan.FromMilliseconds(1), wheel);
                    suspended += delay.IsCompleted ? 0 : 1;
                    await delay;
                }

                if (!scheduler.IsWorkerThread)
                {
                    Interlocked.Increment(ref offWorker);
                }
            }
        }).Unwrap().WaitAsync(s_timeout);
        Volatile.Read(ref offWorker).Should().Be(0, "every resumption ran on the worker");
        suspended.Should().BeGreaterThan(Awaits / 2, "most 1 ms delays are still pending when awaited");
        await SchedulerTestHelpers.WaitUntilAsync(() => scheduler.GetStatistics().TasksExecuted >= suspended + 1);
        SchedulerStatistics stats = scheduler.GetStatistics();
        stats.TasksExecuted.Should().BeGreaterThanOrEqualTo(suspended + 1, "the first run and each resumption is a work item the worker ran");
        stats.TasksStolen.Should().Be(0);
        stats.QueuedTasks.Should().Be(0);
    }

    [Fact]
    public async Task After_the_wheels_Dispose_BCL_consumers_still_cancel_by_token_and_dispose_without_throwing()
    {
        // docs/timers.md: a Task.Delay / CancellationTokenSource / PeriodicTimer pending at the wheel's disposal never
        // completes on its own: "give such waits a cancellation token". That token, and their own Dispose, must still work.
        var wheel = new TimerWheel();
        using var token = new CancellationTokenSource();
        Task delay = Task.Delay(TimeSpan.FromHours(1), wheel, token.Token);
        Task<int> wait = new TaskCompletionSource<int>().Task.WaitAsync(TimeSpan.FromHours(1), wheel, token.Token);
        var ticker = new PeriodicTimer(TimeSpan.FromHours(1), wheel);
        Task<bool> tick = ticker.WaitForNextTickAsync(token.Token).AsTask();
        var ticker2 = new PeriodicTimer(TimeSpan.FromHours(1), wheel);
        Task<bool> tick2 = ticker2.WaitForNextTickAsync().AsTask();
        var source = new CancellationTokenSource(TimeSpan.FromHours(1), wheel);
        var periodic = wheel.CreateTimer(_ => { }, null, TimeSpan.FromMilliseconds(1), TimeSpan.FromMilliseconds(1));
        await Task.Delay(20);

        await Task.Run(wheel.Dispose).WaitAsync(s_timeout);

        // Odd but documented: ITimer.Change throws ObjectDisposedException once the wheel is disposed (docs/timers.md),
        // and CancelAfter passes a provider's exception on, so the (undisposed) source's CancelAfter throws it too.
        FluentActions.Invoking(() => source.CancelAfter(TimeSpan.FromMilliseconds(1))).Should().Throw<ObjectDisposedException>();
        source.IsCancellationRequested.Should().BeFalse();
        FluentActions.Invoking(source.Dispose).Should().NotThrow();
        FluentActions.Invoking(ticker2.Dispose).Should().NotThrow();
        (await tick2.WaitAsync(s_timeout)).Should().BeFalse("a PeriodicTimer disposed by its owner ends its pending wait");
        await periodic.DisposeAsync().AsTask().WaitAsync(s_timeout);

        token.Cancel();
        await FluentActions.Awaiting(() => delay.WaitAsync(s_timeout)).Should().ThrowAsync<TaskCanceledException>();
        await FluentActions.Awaiting(() => wait.WaitAsync(s_timeout)).Should().ThrowAsync<TaskCanceledException>();
        await FluentActions.Awaiting(() => tick.WaitAsync(s_timeout)).Should().ThrowAsync<OperationCanceledException>();
        FluentActions.Invoking(ticker.Dispose).Should().NotThrow();
    }

    [Fact]
    public async Task A_storm_of_BCL_timeouts_over_the_wheel_leaves_nothing_linked_once_every_consumer_is_done()
    {
        // The timeout pattern and its cousins, mixed and raced: every source disposed, every delay completed or canceled,
        // every ticker disposed. Afterwards the wheel must hold nothing (a cancelled 30 s timeout must not stay linked).
        using var wheel = new TimerWheel();
        int completed = 0;
        await Task.WhenAll(Enumerable.Range(0, 3).Select(t => Task.Run(async () =>
        {
            var random = new Random(t + 500);
            for (int i = 0; i < 1_500; i++)
            {
                using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(30), wheel);
                bool cancelsSoon = false;
                switch (random.Next(6))
                {
                    case 0:
                        cts.CancelAfter(TimeSpan.FromSeconds(2));
                        break;
                    case 1:
                        cts.CancelAfter(TimeSpan.FromMilliseconds(random.Next(0, 2)));
                        cancelsSoon = true;
                        break;
                    case 2:
                        cts.CancelAfter(Timeout.InfiniteTimeSpan);
                        break;
                }

                switch (random.Next(5))
                {
                    case 0:
                        try
                        {
                            await wheel.DelayAsync(cancelsSoon ? TimeSpan.FromHours(1) : TimeSpan.FromMicroseconds(random.Next(1, 1500)), cts.Token);
                        }
                        catch (OperationCanceledException)
                        {
                        }

                        break;
                    case 1:
                        Task delay = Task.Delay(TimeSpan.FromHours(1), wheel, cts.Token);
                        await cts.CancelAsync();
                        await delay.Ended();
                        break;
                    case 2:
                        using (var ticker = new PeriodicTimer(TimeSpan.FromMilliseconds(random.Next(1, 3)), wheel))
                        {
                            if (random.Next(2) == 0)
                            {
                                await ticker.WaitForNextTickAsync();
                            }
                        }

                        break;
                    case 3:
                        ValueTask pending = wheel.DelayAsync(Timeout.InfiniteTimeSpan, cts.Token);
                        await cts.CancelAsync();
                        try
                        {
                            await pending;
                        }
                        catch (OperationCanceledException)
                        {
                        }

                        break;
                    default:
                        await using (ITimer timer = wheel.CreateTimer(static _ => { }, null, TimeSpan.FromMilliseconds(random.Next(0, 3)), TimeSpan.FromMilliseconds(random.Next(0, 3))))
                        {
                            timer.Change(TimeSpan.FromSeconds(random.Next(1, 3)), Timeout.InfiniteTimeSpan);
                        }

                        break;
                }

                Interlocked.Increment(ref completed);
            }
        }))).WaitAsync(TimeSpan.FromSeconds(25));
        Volatile.Read(ref completed).Should().Be(4_500);

        // By the driver alone (LinkedCount reconciles nothing itself): "unlinked ... by the driver within 4 ms". Waited
        // for generously (the driver can be held off a loaded machine's cores for seconds), still far within the 30 s
        // timeouts that would otherwise stay linked.
        SpinWait.SpinUntil(() => wheel.LinkedCount == 0, s_timeout).Should().BeTrue($"the driver unlinks what was cancelled without being asked (still {wheel.LinkedCount} linked)");
        SpinWait.SpinUntil(() => wheel.PendingCount == 0, s_timeout).Should().BeTrue($"nothing stays linked once every consumer is done (still {wheel.PendingCount})");
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task After_a_burst_of_the_timeout_pattern_the_driver_alone_unlinks_every_cancelled_timeout(bool reactorWheel)
    {
        // docs/timers.md: a cancelled 30 s timeout does not stay linked for 30 s; any push asks for a drain within 4 ms.
        using var scheduler = new WorkStealingTaskScheduler(1);
        using var reactor = new IoReactor(scheduler);
        using var own = new TimerWheel();
        TimerWheel wheel = reactorWheel ? reactor.Timers : own;
        var reusable = new CancellationTokenSource(Timeout.InfiniteTimeSpan, wheel);
        await Task.WhenAll(Enumerable.Range(0, 2).Select(t => Task.Run(() =>
        {
            for (int i = 0; i < 20_000; i++)
            {
                using (var cts = new CancellationTokenSource(TimeSpan.FromSeconds(30), wheel))
                {
                }

                if (t == 0)
                {
                    reusable.CancelAfter(TimeSpan.FromMilliseconds(500 + (i % 3)));
                    reusable.CancelAfter(Timeout.InfiniteTimeSpan);
                }
                else
                {
                    ITimer timer = wheel.CreateTimer(static _ => { }, null, TimeSpan.FromMilliseconds(300 + (i % 100)), Timeout.InfiniteTimeSpan);
                    timer.Change(TimeSpan.FromSeconds(5), Timeout.InfiniteTimeSpan);
                    timer.Dispose();
                }
            }
        }))).WaitAsync(TimeSpan.FromSeconds(20));

        // Waited for generously (the driver can be held off a loaded machine's cores for seconds), still far within the
        // 30 s timeouts that would otherwise stay linked.
        SpinWait.SpinUntil(() => wheel.LinkedCount == 0, s_timeout).Should().BeTrue($"the driver unlinks every cancelled timeout by itself (still {wheel.LinkedCount} linked)");
        wheel.PendingCount.Should().Be(0);
        reusable.IsCancellationRequested.Should().BeFalse();
        reusable.Dispose();
    }

    [Fact]
    public async Task The_Shared_scheduler_refuses_Dispose_and_keeps_reporting_to_the_meter()
    {
        WorkStealingTaskScheduler shared = WorkStealingTaskScheduler.Shared;
        await shared.Factory.StartNew(() => { }).WaitAsync(s_timeout);
        FluentActions.Invoking(shared.Dispose).Should().Throw<InvalidOperationException>();
        FluentActions.Invoking(() => shared.DisposeAsync()).Should().Throw<InvalidOperationException>();
        await shared.Factory.StartNew(() => { }).WaitAsync(s_timeout);

        // A task's awaiters can resume before its worker counts it (the count follows the run).
        await SchedulerTestHelpers.WaitUntilAsync(() => shared.GetStatistics().TasksExecuted >= 1);
        long? executed = null;
        using var listener = new MeterListener();
        listener.InstrumentPublished = (instrument, l) =>
        {
            if (instrument.Meter.Name == "Scheduler" && instrument.Name == "scheduler.tasks.executed")
            {
                l.EnableMeasurementEvents(instrument);
            }
        };
        listener.SetMeasurementEventCallback<long>((_, value, tags, _) =>
        {
            foreach (var tag in tags)
            {
                if (tag.Key == "scheduler.id" && tag.Value is int id && id == shared.Id)
                {
                    executed = value;
                }
            }
        });
        listener.Start();
        listener.RecordObservableInstruments();
        executed.Should().NotBeNull("a refused Dispose leaves the live Shared scheduler in the meter");
        executed!.Value.Should().BeGreaterThanOrEqualTo(1);
    }

    private static TimeSpan WholeMilliseconds(TimeSpan span) => TimeSpan.FromMilliseconds(Math.Floor(span.TotalMilliseconds));

    private static void InterlockedMax(ref int location, int value)
    {
        int current = Volatile.Read(ref location);
        while (value > current)
        {
            int seen = Interlocked.CompareExchange(ref location, value, current);
            if (seen == current)
            {
                return;
            }

            current = seen;
        }
    }
}
