using System.Diagnostics;
using System.Runtime.CompilerServices;
using Scheduler.Timers;

namespace Scheduler.Tests.Timers;

/// <summary><see cref="TimerWheel.CreateTimer"/>: the <see cref="ITimer"/> contract on the real driver.</summary>
public sealed class TimerWheelTimerTests
{
    private static readonly TimeSpan s_timeout = TimeSpan.FromSeconds(10);

    [Fact]
    public async Task One_shot_timer_fires_once_after_its_due_time_on_a_ThreadPool_thread()
    {
        using var wheel = new TimerWheel();
        var fired = new TaskCompletionSource<(long At, bool PoolThread, object? State)>(TaskCreationOptions.RunContinuationsAsynchronously);
        int count = 0;
        var state = new object();
        long start = Stopwatch.GetTimestamp();

        using ITimer timer = wheel.CreateTimer(
            s =>
            {
                Interlocked.Increment(ref count);
                fired.TrySetResult((Stopwatch.GetTimestamp(), Thread.CurrentThread.IsThreadPoolThread, s));
            },
            state,
            TimeSpan.FromMilliseconds(30),
            Timeout.InfiniteTimeSpan);

        (long at, bool poolThread, object? seen) = await fired.Task.WaitAsync(s_timeout);
        Stopwatch.GetElapsedTime(start, at).Should().BeGreaterThanOrEqualTo(TimeSpan.FromMilliseconds(30));
        poolThread.Should().BeTrue("callbacks never run on the driver thread");
        seen.Should().BeSameAs(state);

        await Task.Delay(100);
        Volatile.Read(ref count).Should().Be(1);
        wheel.PendingCount.Should().Be(0);
    }

    [Fact]
    public async Task Zero_due_time_fires_immediately()
    {
        using var wheel = new TimerWheel();
        var fired = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        using ITimer timer = wheel.CreateTimer(_ => fired.TrySetResult(), null, TimeSpan.Zero, Timeout.InfiniteTimeSpan);
        await fired.Task.WaitAsync(s_timeout);
    }

    [Fact]
    public async Task Periodic_timer_fires_repeatedly_and_the_kth_firing_is_never_early()
    {
        using var wheel = new TimerWheel();
        TimeSpan period = TimeSpan.FromMilliseconds(15);
        var times = new List<long>();
        var done = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        long start = Stopwatch.GetTimestamp();
        using ITimer timer = wheel.CreateTimer(
            _ =>
            {
                lock (times)
                {
                    times.Add(Stopwatch.GetTimestamp());
                    if (times.Count == 6)
                    {
                        done.TrySetResult();
                    }
                }
            },
            null,
            period,
            period);

        await done.Task.WaitAsync(s_timeout);
        timer.Dispose();
        lock (times)
        {
            for (int k = 0; k < 6; k++)
            {
                // Each period is measured from the previous firing, so the k-th firing is at least (k+1) periods in.
                Stopwatch.GetElapsedTime(start, times[k]).Should().BeGreaterThanOrEqualTo(period * (k + 1));
            }
        }
    }

    [Fact]
    public async Task Zero_period_means_one_shot()
    {
        using var wheel = new TimerWheel();
        int count = 0;
        var fired = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        using ITimer timer = wheel.CreateTimer(
            _ =>
            {
                Interlocked.Increment(ref count);
                fired.TrySetResult();
            },
            null,
            TimeSpan.FromMilliseconds(5),
            TimeSpan.Zero);
        await fired.Task.WaitAsync(s_timeout);
        await Task.Delay(100);
        Volatile.Read(ref count).Should().Be(1);
        wheel.PendingCount.Should().Be(0);
    }

    [Fact]
    public async Task Change_arms_reschedules_and_stops_a_timer()
    {
        using var wheel = new TimerWheel();
        int count = 0;
        var fired = new SemaphoreSlim(0);
        using ITimer timer = wheel.CreateTimer(
            _ =>
            {
                Interlocked.Increment(ref count);
                fired.Release();
            },
            null,
            Timeout.InfiniteTimeSpan,
            Timeout.InfiniteTimeSpan);

        await Task.Delay(50);
        Volatile.Read(ref count).Should().Be(0, "an infinite due time never fires");

        long start = Stopwatch.GetTimestamp();
        timer.Change(TimeSpan.FromMilliseconds(20), Timeout.InfiniteTimeSpan).Should().BeTrue();
        (await fired.WaitAsync(s_timeout)).Should().BeTrue();
        Stopwatch.GetElapsedTime(start).Should().BeGreaterThanOrEqualTo(TimeSpan.FromMilliseconds(20));

        // Push a pending firing far out: the old schedule must not fire. The clock is read before the short arm: a stall of
        // 30 ms before the far re-arm returned (the thread preempted on a loaded machine) lets the short arm fire first,
        // which is allowed; such an attempt proves nothing and is repeated once its firing, if any, has run.
        for (int attempt = 1; ; attempt++)
        {
            int before = Volatile.Read(ref count);
            long shortArmed = Stopwatch.GetTimestamp();
            timer.Change(TimeSpan.FromMilliseconds(30), Timeout.InfiniteTimeSpan).Should().BeTrue();
            timer.Change(TimeSpan.FromHours(1), Timeout.InfiniteTimeSpan).Should().BeTrue();
            bool pushedInTime = Stopwatch.GetElapsedTime(shortArmed) < TimeSpan.FromMilliseconds(30);
            await Task.Delay(120);
            if (pushedInTime)
            {
                Volatile.Read(ref count).Should().Be(before, "the far re-arm replaced the short one");
                break;
            }

            attempt.Should().BeLessThan(5, "the far re-arm returned after the short deadline in every attempt");
            _ = TimerCallbacks.WaitUntilIdle(s_timeout, timer);
            while (fired.Wait(0))
            {
                // A release of that firing, if it came: the waits below count the periodic firings only.
            }
        }

        // Make it periodic, then stop it with an infinite due time.
        timer.Change(TimeSpan.FromMilliseconds(5), TimeSpan.FromMilliseconds(5)).Should().BeTrue();
        (await fired.WaitAsync(s_timeout)).Should().BeTrue();
        (await fired.WaitAsync(s_timeout)).Should().BeTrue();
        timer.Change(Timeout.InfiniteTimeSpan, Timeout.InfiniteTimeSpan).Should().BeTrue();
        await Task.Delay(200);

        // A firing queued before the stop may still run, later than 200 ms on a loaded machine: settled once none is queued or running.
        _ = TimerCallbacks.WaitUntilIdle(s_timeout, timer);
        int stoppedAt = Volatile.Read(ref count);
        await Task.Delay(100);
        Volatile.Read(ref count).Should().Be(stoppedAt);
        wheel.PendingCount.Should().Be(0);
    }

    [Fact]
    public void A_linked_timer_that_is_disposed_is_unlinked_by_the_next_reconcile()
    {
        // The reconciler handles a disposed timer without its intent bit (disposal is final); it must still unlink it.
        using var wheel = new TimerWheel();
        ITimer[] timers = [.. Enumerable.Range(0, 10).Select(i =>
            wheel.CreateTimer(static _ => { }, null, TimeSpan.FromSeconds(10 + i), i % 2 == 0 ? Timeout.InfiniteTimeSpan : TimeSpan.FromSeconds(1)))];
        wheel.PendingCount.Should().Be(10); // reconciled: all linked
        wheel.LinkedCount.Should().Be(10);

        foreach (ITimer timer in timers.Take(7))
        {
            timer.Dispose();
        }

        wheel.PendingCount.Should().Be(3);
        wheel.LinkedCount.Should().Be(3);
        timers[0].Change(TimeSpan.FromSeconds(1), Timeout.InfiniteTimeSpan).Should().BeFalse();
        wheel.PendingCount.Should().Be(3);
    }

    [Fact]
    public async Task Disposed_timer_does_not_fire_and_Change_returns_false()
    {
        using var wheel = new TimerWheel();
        TimeSpan due = TimeSpan.FromMilliseconds(20);
        ITimer timer;
        StrongBox<int> count;
        for (int attempt = 1; ; attempt++)
        {
            // A thread preempted for the whole due time between the creation and the disposal (a loaded machine) lets
            // the timer fire before it is disposed, which is allowed: only a Dispose that began before the deadline
            // (measured before the creation, so no later than the wheel's) proves that disposal stops the timer. Such
            // an attempt proves nothing and is repeated, with a count of its own.
            long created = Stopwatch.GetTimestamp();
            count = new StrongBox<int>(0);
            timer = wheel.CreateTimer(state => Interlocked.Increment(ref ((StrongBox<int>)state!).Value), count, due, due);
            timer.Dispose();
            if (Stopwatch.GetElapsedTime(created) < due)
            {
                break;
            }

            attempt.Should().BeLessThan(5, "the disposal began after the deadline in every attempt");
        }

        timer.Dispose();
        await timer.DisposeAsync();
        wheel.PendingCount.Should().Be(0);
        timer.Change(TimeSpan.FromMilliseconds(1), Timeout.InfiniteTimeSpan).Should().BeFalse();
        await Task.Delay(100);
        Volatile.Read(ref count.Value).Should().Be(0);
    }

    [Fact]
    public async Task DisposeAsync_waits_for_a_running_callback_and_no_callback_starts_afterwards()
    {
        using var wheel = new TimerWheel();
        using var entered = new ManualResetEventSlim();
        using var release = new ManualResetEventSlim();
        int starts = 0;
        ITimer timer = wheel.CreateTimer(_ =>
        {
            Interlocked.Increment(ref starts);
            entered.Set();
            release.Wait(TimeSpan.FromSeconds(30));
        }, null, TimeSpan.Zero, TimeSpan.FromMilliseconds(1));

        entered.Wait(TimeSpan.FromSeconds(30)).Should().BeTrue();
        ValueTask disposing = timer.DisposeAsync();
        await Task.Delay(50);
        disposing.IsCompleted.Should().BeFalse("a callback of the timer is still running");
        release.Set();
        await disposing.AsTask().WaitAsync(TimeSpan.FromSeconds(30));

        int startsAtDisposal = Volatile.Read(ref starts);
        await Task.Delay(50);
        Volatile.Read(ref starts).Should().Be(startsAtDisposal, "no callback starts once the timer is disposed");
    }

    [Fact]
    public async Task DisposeAsync_with_no_callback_running_completes_at_once()
    {
        using var wheel = new TimerWheel();
        ITimer timer = wheel.CreateTimer(static _ => { }, null, TimeSpan.FromSeconds(30), Timeout.InfiniteTimeSpan);
        ValueTask disposing = timer.DisposeAsync();
        disposing.IsCompletedSuccessfully.Should().BeTrue();
        await disposing;
    }

    [Fact]
    public async Task Callback_runs_in_the_ExecutionContext_captured_at_creation()
    {
        using var wheel = new TimerWheel();
        var local = new AsyncLocal<string>();
        var seen = new TaskCompletionSource<string?>(TaskCreationOptions.RunContinuationsAsynchronously);
        local.Value = "captured";
        using ITimer timer = wheel.CreateTimer(_ => seen.TrySetResult(local.Value), null, TimeSpan.FromMilliseconds(5), Timeout.InfiniteTimeSpan);
        local.Value = "changed later";
        (await seen.Task.WaitAsync(s_timeout)).Should().Be("captured");
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public async Task Periodic_callbacks_run_in_the_ExecutionContext_captured_at_creation(bool periodicFromCreation)
    {
        // A periodic timer keeps its period beside the captured context (the field they share holds the context until
        // then): created periodic, or made periodic later by Change, every tick still runs in the creation's context.
        using var wheel = new TimerWheel();
        var local = new AsyncLocal<string>();
        var seen = new System.Collections.Concurrent.ConcurrentQueue<string?>();
        var threeTicks = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        local.Value = "captured";
        TimeSpan period = TimeSpan.FromMilliseconds(2);
        await using ITimer timer = wheel.CreateTimer(
            _ =>
            {
                seen.Enqueue(local.Value);
                if (seen.Count >= 3)
                {
                    threeTicks.TrySetResult();
                }
            },
            null,
            periodicFromCreation ? period : TimeSpan.FromMinutes(10),
            periodicFromCreation ? period : Timeout.InfiniteTimeSpan);
        local.Value = "changed later";
        if (!periodicFromCreation)
        {
            timer.Change(period, period).Should().BeTrue();
        }

        await threeTicks.Task.WaitAsync(s_timeout);
        await timer.DisposeAsync();
        seen.Should().OnlyContain(value => value == "captured");
    }

    [Fact]
    public async Task A_throwing_callback_is_reported_as_unhandled_and_the_wheel_keeps_running()
    {
        UnhandledExceptions.EnsureInstalled();
        using var wheel = new TimerWheel();
        var thrown = new DeliberateTimerException("callback failure");
        int throws = 0;
        using ITimer bad = wheel.CreateTimer(
            _ =>
            {
                Interlocked.Increment(ref throws);
                throw thrown;
            },
            null,
            TimeSpan.FromMilliseconds(5),
            TimeSpan.FromMilliseconds(5));

        var later = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        using ITimer good = wheel.CreateTimer(_ => later.TrySetResult(), null, TimeSpan.FromMilliseconds(60), Timeout.InfiniteTimeSpan);

        await later.Task.WaitAsync(s_timeout);

        // Waited for, not read at once: a driver that oversleeps past 60 ms (a loaded machine) finds both timers due
        // in one pass and fires the bad one only once before the good one.
        SpinWait.SpinUntil(() => Volatile.Read(ref throws) > 1, s_timeout).Should().BeTrue("the periodic timer keeps firing after its callback threw");
        SpinWait.SpinUntil(() => UnhandledExceptions.Contains(thrown), s_timeout).Should().BeTrue(
            "the exception goes unhandled on the ThreadPool, as from a System.Threading.Timer callback, instead of being swallowed");
    }

    [Fact]
    public void Bad_arguments_throw_conventional_exceptions()
    {
        Action zeroTick = () => _ = new TimerWheel(TimeSpan.Zero);
        Action negativeTick = () => _ = new TimerWheel(TimeSpan.FromMilliseconds(-1));
        zeroTick.Should().Throw<ArgumentOutOfRangeException>().WithParameterName("tickDuration");
        negativeTick.Should().Throw<ArgumentOutOfRangeException>().WithParameterName("tickDuration");
        Action overAnHour = () => _ = new TimerWheel(TimeSpan.FromHours(1) + TimeSpan.FromTicks(1));
        overAnHour.Should().Throw<ArgumentOutOfRangeException>().WithParameterName("tickDuration");
        using (var hourly = new TimerWheel(TimeSpan.FromHours(1)))
        {
            hourly.TickDuration.Should().Be(TimeSpan.FromHours(1), "one hour is the longest tick, and allowed");
        }

        using var wheel = new TimerWheel();
        wheel.TickDuration.Should().Be(TimeSpan.FromMilliseconds(1));
        Action nullCallback = () => wheel.CreateTimer(null!, null, TimeSpan.Zero, Timeout.InfiniteTimeSpan);
        Action badDue = () => wheel.CreateTimer(_ => { }, null, TimeSpan.FromMilliseconds(-2), Timeout.InfiniteTimeSpan);
        Action badPeriod = () => wheel.CreateTimer(_ => { }, null, TimeSpan.Zero, TimeSpan.FromTicks(-20_000)); // -2 ms: the first value TimeProvider.System refuses
        nullCallback.Should().Throw<ArgumentNullException>().WithParameterName("callback");
        badDue.Should().Throw<ArgumentOutOfRangeException>().WithParameterName("dueTime");
        badPeriod.Should().Throw<ArgumentOutOfRangeException>().WithParameterName("period");

        using ITimer timer = wheel.CreateTimer(_ => { }, null, Timeout.InfiniteTimeSpan, Timeout.InfiniteTimeSpan);
        Action badChange = () => timer.Change(TimeSpan.FromSeconds(-5), Timeout.InfiniteTimeSpan);
        badChange.Should().Throw<ArgumentOutOfRangeException>().WithParameterName("dueTime");
    }

    [Fact]
    public async Task After_Dispose_timers_stop_and_calls_throw_ObjectDisposedException()
    {
        TimeSpan due = TimeSpan.FromMilliseconds(40);
        TimerWheel wheel;
        ITimer timer;
        StrongBox<int> count;
        for (int attempt = 1; ; attempt++)
        {
            // As above: a wheel disposed only after the timer's deadline (the thread preempted in between) may have
            // fired it first; the attempt proves nothing and is repeated with a fresh wheel and count.
            long created = Stopwatch.GetTimestamp();
            count = new StrongBox<int>(0);
            wheel = new TimerWheel();
            timer = wheel.CreateTimer(state => Interlocked.Increment(ref ((StrongBox<int>)state!).Value), count, due, due);
            wheel.Dispose();
            if (Stopwatch.GetElapsedTime(created) < due)
            {
                break;
            }

            attempt.Should().BeLessThan(5, "the disposal began after the deadline in every attempt");
        }

        wheel.Dispose();

        await Task.Delay(120);
        Volatile.Read(ref count.Value).Should().Be(0);
        Action create = () => wheel.CreateTimer(_ => { }, null, TimeSpan.Zero, Timeout.InfiniteTimeSpan);
        Action change = () => timer.Change(TimeSpan.FromMilliseconds(1), Timeout.InfiniteTimeSpan);
        create.Should().Throw<ObjectDisposedException>();
        change.Should().Throw<ObjectDisposedException>();
        change.Should().Throw<ObjectDisposedException>("a change refused once (which leaves the timer marked for the closed stack) is refused again");
        timer.Dispose();
        wheel.GetTimestamp().Should().BeGreaterThan(0, "reading the clock still works");
    }

    [Fact]
    public async Task No_callback_starts_after_the_wheels_Dispose_returned_even_while_its_host_was_firing()
    {
        // A hosted wheel (IoReactor.Timers) has no driver thread for Dispose to join: the host may still be firing a
        // batch collected before the disposal. Here it is held inside that batch (a delay's SynchronizationContext
        // blocks in Post, before the batch's timers are fired) until Dispose has returned; the timer of the same batch
        // must not run after that.
        var wheel = new TimerWheel(TimeSpan.FromMilliseconds(1), wakeHost: () => { });
        using var context = new BlockingSynchronizationContext();
#pragma warning disable CA2012 // Only a continuation registered under the context is wanted: the delay is never consumed.
        ValueTask delay = wheel.DelayAsync(TimeSpan.FromMilliseconds(1));
#pragma warning restore CA2012
        SynchronizationContext.SetSynchronizationContext(context);
        try
        {
            delay.GetAwaiter().OnCompleted(() => { });
        }
        finally
        {
            SynchronizationContext.SetSynchronizationContext(null);
        }

        int disposeReturned = 0;
        int ranAfterDispose = 0;
        var ran = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        using ITimer timer = wheel.CreateTimer(
            _ =>
            {
                Volatile.Write(ref ranAfterDispose, Volatile.Read(ref disposeReturned));
                ran.TrySetResult();
            },
            null,
            TimeSpan.FromMilliseconds(1),
            Timeout.InfiniteTimeSpan);
        Thread.Sleep(5); // both are due

        Task host = Task.Factory.StartNew(() => wheel.RunHostedDriverStep(out _), CancellationToken.None, TaskCreationOptions.LongRunning, TaskScheduler.Default);
        context.Entered.Wait(s_timeout).Should().BeTrue("the host completes the delay and posts its continuation");
        wheel.Dispose();
        Volatile.Write(ref disposeReturned, 1);
        context.Release.Set();
        await host.WaitAsync(s_timeout);

        await Task.WhenAny(ran.Task, Task.Delay(200));
        Volatile.Read(ref ranAfterDispose).Should().Be(0, "a disposed wheel's timers never fire again");
    }

    [Fact]
    public async Task Twenty_thousand_random_timers_all_fire_once_and_none_early()
    {
        using var wheel = new TimerWheel();
        const int Count = 20_000;
        var random = new Random(42);
        int remaining = Count;
        int early = 0;
        int duplicates = 0;
        var firedFlags = new int[Count];
        var done = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var timers = new ITimer[Count];
        for (int i = 0; i < Count; i++)
        {
            int id = i;
            TimeSpan due = TimeSpan.FromMicroseconds(random.Next(0, 60_000));
            long start = Stopwatch.GetTimestamp();
            timers[i] = wheel.CreateTimer(
                _ =>
                {
                    if (Stopwatch.GetElapsedTime(start) < due)
                    {
                        Interlocked.Increment(ref early);
                    }

                    if (Interlocked.Exchange(ref firedFlags[id], 1) != 0)
                    {
                        Interlocked.Increment(ref duplicates);
                    }

                    if (Interlocked.Decrement(ref remaining) == 0)
                    {
                        done.TrySetResult();
                    }
                },
                null,
                due,
                Timeout.InfiniteTimeSpan);
        }

        await done.Task.WaitAsync(TimeSpan.FromSeconds(20));
        early.Should().Be(0);
        duplicates.Should().Be(0);
        foreach (ITimer timer in timers)
        {
            timer.Dispose();
        }
    }

    [Fact]
    public async Task Concurrent_Change_and_Dispose_racing_the_driver_keep_the_wheel_consistent()
    {
        using var wheel = new TimerWheel();
        const int TimerCount = 256;
        int fired = 0;
        var timers = new ITimer[TimerCount];
        for (int i = 0; i < TimerCount; i++)
        {
            timers[i] = wheel.CreateTimer(_ => Interlocked.Increment(ref fired), null, TimeSpan.FromMilliseconds(1 + (i % 5)), TimeSpan.FromMilliseconds(1 + (i % 3)));
        }

        // Four threads of their own, not ThreadPool work items: half a second of four busy items would hold every
        // ThreadPool thread (as many as cores at first), starving the callbacks here and, worse, the ThreadPool work
        // of every test running beside this one, whose timing bounds then fail for no fault of their own.
        long end = Stopwatch.GetTimestamp() + (Stopwatch.Frequency / 2);
        var workers = Enumerable.Range(0, 4).Select(seed => Task.Factory.StartNew(() =>
        {
            var random = new Random(seed);
            while (Stopwatch.GetTimestamp() < end)
            {
                ITimer timer = timers[random.Next(TimerCount)];
                switch (random.Next(4))
                {
                    case 0:
                        timer.Change(TimeSpan.Zero, Timeout.InfiniteTimeSpan);
                        break;
                    case 1:
                        timer.Change(TimeSpan.FromTicks(random.Next(1, 30_000)), TimeSpan.FromTicks(random.Next(0, 30_000)));
                        break;
                    case 2:
                        timer.Change(Timeout.InfiniteTimeSpan, Timeout.InfiniteTimeSpan);
                        break;
                    default:
                        timer.Change(TimeSpan.FromHours(1), Timeout.InfiniteTimeSpan);
                        break;
                }
            }
        }, CancellationToken.None, TaskCreationOptions.LongRunning, TaskScheduler.Default)).ToArray();

        await Task.WhenAll(workers).WaitAsync(s_timeout);

        // The busy threads above may have kept the ThreadPool, where the callbacks run, from the CPU.
        SpinWait.SpinUntil(() => Volatile.Read(ref fired) > 0, s_timeout).Should().BeTrue();

        foreach (ITimer timer in timers)
        {
            timer.Dispose();
        }

        int atDispose = Volatile.Read(ref fired);
        wheel.PendingCount.Should().Be(0, "every unlink kept the intrusive lists and counts consistent");

        // As with System.Threading.Timer, a callback already handed to the ThreadPool may still run after Dispose
        // (and a starved pool can delay it arbitrarily), but a disposed periodic timer never re-arms: over half a
        // second its 1-3 ms periods would add hundreds of firings per timer, so at most one late callback per timer.
        await Task.Delay(500);
        (Volatile.Read(ref fired) - atDispose).Should().BeLessThanOrEqualTo(TimerCount, "disposed timers stop firing");

        // The wheel still works after the storm.
        long start = Stopwatch.GetTimestamp();
        await wheel.DelayAsync(TimeSpan.FromMilliseconds(5));
        Stopwatch.GetElapsedTime(start).Should().BeGreaterThanOrEqualTo(TimeSpan.FromMilliseconds(5));
    }
}

/// <summary>A context whose first <see cref="Post"/> blocks until <see cref="Release"/> is set, then runs the callback on the ThreadPool.</summary>
internal sealed class BlockingSynchronizationContext : SynchronizationContext, IDisposable
{
    public ManualResetEventSlim Entered { get; } = new();

    public ManualResetEventSlim Release { get; } = new();

    public override void Post(SendOrPostCallback d, object? state)
    {
        Entered.Set();
        Release.Wait();
        ThreadPool.QueueUserWorkItem(_ => d(state));
    }

    public void Dispose()
    {
        Entered.Dispose();
        Release.Dispose();
    }
}
