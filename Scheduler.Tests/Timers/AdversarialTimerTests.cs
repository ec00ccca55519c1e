using System.Diagnostics;
using Scheduler.IO;
using Scheduler.Timers;

namespace Scheduler.Tests.Timers;

/// <summary>
/// Adversarial checks of the wheel against what users of <see cref="TimeProvider"/>/<see cref="ITimer"/> expect from
/// <see cref="TimeProvider.System"/> and <see cref="System.Threading.Timer"/> (deviations as documented in docs/timers.md).
/// </summary>
public sealed class AdversarialTimerTests
{
    private static readonly TimeSpan s_timeout = TimeSpan.FromSeconds(10);

    [Theory]
    [InlineData(-2.0)]
    [InlineData(-1.9999)]
    [InlineData(-1.5)]
    [InlineData(-1.0)]
    [InlineData(-0.9999)]
    [InlineData(-0.0001)]
    [InlineData(0.0)]
    public void Negative_due_times_and_periods_are_validated_as_by_TimeProvider_System(double milliseconds)
    {
        TimeSpan value = TimeSpan.FromTicks((long)Math.Round(milliseconds * TimeSpan.TicksPerMillisecond));
        using var wheel = new TimerWheel();
        foreach (bool asPeriod in new[] { false, true })
        {
            string name = asPeriod ? "period" : "dueTime";
            TimeSpan due = asPeriod ? Timeout.InfiniteTimeSpan : value;
            TimeSpan period = asPeriod ? value : Timeout.InfiniteTimeSpan;
            Exception? system = Record.Exception(() => TimeProvider.System.CreateTimer(_ => { }, null, due, period).Dispose());
            Exception? ours = Record.Exception(() => wheel.CreateTimer(_ => { }, null, due, period).Dispose());
            using ITimer live = wheel.CreateTimer(_ => { }, null, Timeout.InfiniteTimeSpan, Timeout.InfiniteTimeSpan);
            Exception? oursChange = Record.Exception(() => live.Change(due, period));
            using ITimer systemLive = TimeProvider.System.CreateTimer(_ => { }, null, Timeout.InfiniteTimeSpan, Timeout.InfiniteTimeSpan);
            Exception? systemChange = Record.Exception(() => systemLive.Change(due, period));
            live.Change(Timeout.InfiniteTimeSpan, Timeout.InfiniteTimeSpan);
            systemLive.Change(Timeout.InfiniteTimeSpan, Timeout.InfiniteTimeSpan);

            (ours?.GetType()).Should().Be(system?.GetType(), $"CreateTimer {name} = {value}");
            (oursChange?.GetType()).Should().Be(systemChange?.GetType(), $"Change {name} = {value}");
            if (system is ArgumentOutOfRangeException)
            {
                ((ArgumentOutOfRangeException)ours!).ParamName.Should().Be(name);
                ((ArgumentOutOfRangeException)oursChange!).ParamName.Should().Be(name);
                ours.Message.Should().StartWith("The time must be more than -2 ms", "the message says which values are taken");
                oursChange.Message.Should().StartWith("The time must be more than -2 ms");
            }
        }
    }

    [Fact]
    public async Task A_due_time_just_below_zero_fires_and_one_just_below_minus_one_ms_never_does()
    {
        using var wheel = new TimerWheel();
        var fired = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        int infiniteFired = 0;
        using ITimer nearZero = wheel.CreateTimer(_ => fired.TrySetResult(), null, TimeSpan.FromTicks(-5000), Timeout.InfiniteTimeSpan);
        using ITimer nearInfinite = wheel.CreateTimer(_ => Interlocked.Increment(ref infiniteFired), null, TimeSpan.FromTicks(-15000), Timeout.InfiniteTimeSpan);
        await fired.Task.WaitAsync(s_timeout);
        await Task.Delay(100);
        Volatile.Read(ref infiniteFired).Should().Be(0, "-1.5 ms truncates to -1 ms, Timeout.InfiniteTimeSpan");
    }

    [Fact]
    public void Change_after_timer_Dispose_returns_false_and_after_wheel_Dispose_throws()
    {
        var wheel = new TimerWheel();
        ITimer disposed = wheel.CreateTimer(_ => { }, null, TimeSpan.FromHours(1), Timeout.InfiniteTimeSpan);
        ITimer live = wheel.CreateTimer(_ => { }, null, TimeSpan.FromHours(1), TimeSpan.FromHours(1));
        disposed.Dispose();
        disposed.Change(TimeSpan.FromMilliseconds(1), Timeout.InfiniteTimeSpan).Should().BeFalse();
        disposed.Change(TimeSpan.Zero, Timeout.InfiniteTimeSpan).Should().BeFalse("no fire-now for a disposed timer either");
        disposed.Dispose();

        wheel.Dispose();
        disposed.Change(TimeSpan.FromSeconds(1), Timeout.InfiniteTimeSpan).Should().BeFalse("the timer's own disposal is reported first");
        FluentActions.Invoking(() => live.Change(TimeSpan.FromSeconds(1), Timeout.InfiniteTimeSpan)).Should().Throw<ObjectDisposedException>();
        FluentActions.Invoking(() => wheel.CreateTimer(_ => { }, null, TimeSpan.FromSeconds(1), Timeout.InfiniteTimeSpan)).Should().Throw<ObjectDisposedException>();
        FluentActions.Invoking(() => wheel.DelayAsync(TimeSpan.FromSeconds(1))).Should().Throw<ObjectDisposedException>();
        live.Dispose();
        CompletedSuccessfully(live.DisposeAsync()).Should().BeTrue();
        wheel.GetTimestamp().Should().BeGreaterThan(0);
        wheel.Dispose();
    }

    [Fact]
    public async Task A_periodic_timer_disposed_in_its_own_callback_stops_firing()
    {
        using var wheel = new TimerWheel();
        int calls = 0;
        var disposedAt = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        ITimer? timer = null;
        var created = new ManualResetEventSlim();
        timer = wheel.CreateTimer(
            _ =>
            {
                if (Interlocked.Increment(ref calls) == 5)
                {
                    created.Wait();
                    timer!.Dispose();
                    disposedAt.TrySetResult();
                }
            },
            null,
            TimeSpan.FromMilliseconds(1),
            TimeSpan.FromMilliseconds(1));
        created.Set();
        await disposedAt.Task.WaitAsync(s_timeout);
        await Task.Delay(100);

        // A callback that had started before the Dispose counts itself meanwhile, or later when a loaded machine holds its
        // thread off the core: settled once none is running.
        _ = TimerCallbacks.WaitUntilIdle(s_timeout, timer);
        int settled = Volatile.Read(ref calls);
        await Task.Delay(300);
        Volatile.Read(ref calls).Should().Be(settled, "a disposed periodic timer never fires again");
        timer.Change(TimeSpan.FromMilliseconds(1), TimeSpan.FromMilliseconds(1)).Should().BeFalse();
    }

    [Fact]
    public async Task A_periodic_timer_stopped_in_its_callback_stays_stopped_and_can_be_rearmed_once()
    {
        using var wheel = new TimerWheel();
        int calls = 0;
        var stopped = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        bool stoppedResult = false;
        ITimer? timer = null;
        var created = new ManualResetEventSlim();
        timer = wheel.CreateTimer(
            _ =>
            {
                if (Interlocked.Increment(ref calls) == 3)
                {
                    created.Wait();
                    stoppedResult = timer!.Change(Timeout.InfiniteTimeSpan, Timeout.InfiniteTimeSpan);
                    stopped.TrySetResult();
                }
            },
            null,
            TimeSpan.FromMilliseconds(2),
            TimeSpan.FromMilliseconds(2));
        created.Set();
        await stopped.Task.WaitAsync(s_timeout);
        stoppedResult.Should().BeTrue();
        await Task.Delay(100);

        // A firing queued before the stop may still run, later than 100 ms on a loaded machine: settled once none is queued or running.
        _ = TimerCallbacks.WaitUntilIdle(s_timeout, timer);
        int settled = Volatile.Read(ref calls);
        await Task.Delay(200);
        Volatile.Read(ref calls).Should().Be(settled, "a timer changed to infinite in its callback stays stopped");

        timer.Change(TimeSpan.FromMilliseconds(10), Timeout.InfiniteTimeSpan).Should().BeTrue();
        SpinWait.SpinUntil(() => Volatile.Read(ref calls) == settled + 1, s_timeout).Should().BeTrue();
        await Task.Delay(200);
        Volatile.Read(ref calls).Should().Be(settled + 1, "the re-arm was a one-shot");
        timer.Dispose();
    }

    [Fact]
    public async Task A_one_shot_timer_rearmed_with_zero_from_its_callback_fires_each_time()
    {
        using var wheel = new TimerWheel();
        int calls = 0;
        var done = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        ITimer? timer = null;
        var created = new ManualResetEventSlim();
        timer = wheel.CreateTimer(
            _ =>
            {
                created.Wait();
                int n = Interlocked.Increment(ref calls);
                if (n < 200)
                {
                    // Alternate the fire-now path and a short wheel arm.
                    timer!.Change(n % 2 == 0 ? TimeSpan.Zero : TimeSpan.FromMilliseconds(1), Timeout.InfiniteTimeSpan);
                }
                else
                {
                    done.TrySetResult();
                }
            },
            null,
            TimeSpan.Zero,
            Timeout.InfiniteTimeSpan);
        created.Set();
        await done.Task.WaitAsync(s_timeout);
        await Task.Delay(100);
        Volatile.Read(ref calls).Should().Be(200);
        timer.Dispose();
    }

    [Fact]
    public async Task Periodic_firings_never_drift_early_of_due_plus_k_periods()
    {
        using var wheel = new TimerWheel();
        TimeSpan due = TimeSpan.FromMilliseconds(20);
        TimeSpan period = TimeSpan.FromMilliseconds(15);
        const int Count = 12;
        var firedAt = new long[Count];
        int calls = 0;
        var done = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        long start = Stopwatch.GetTimestamp();
        using ITimer timer = wheel.CreateTimer(
            _ =>
            {
                long now = Stopwatch.GetTimestamp();
                int n = Interlocked.Increment(ref calls) - 1;
                if (n < Count)
                {
                    firedAt[n] = now;
                }

                if (n == Count - 1)
                {
                    done.TrySetResult();
                }
            },
            null,
            due,
            period);
        await done.Task.WaitAsync(s_timeout);
        timer.Dispose();
        for (int k = 0; k < Count; k++)
        {
            Stopwatch.GetElapsedTime(start, firedAt[k]).Should().BeGreaterThanOrEqualTo(due + (k * period), $"firing {k} is never early");
        }
    }

    [Fact]
    public async Task Timers_created_inside_callbacks_across_wheels_and_a_disposed_nursery_wheel_all_fire()
    {
        using var a = new TimerWheel();
        using var b = new TimerWheel();

        // Bind ThreadPool threads' nurseries to a wheel that is then disposed.
        var c = new TimerWheel();
        await Task.WhenAll(Enumerable.Range(0, 16).Select(_ => Task.Run(() => c.CreateTimer(_ => { }, null, TimeSpan.FromHours(1), Timeout.InfiniteTimeSpan))));
        c.Dispose();

        const int Chain = 400;
        int fired = 0;
        long earliestViolation = 0;
        var done = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var timers = new System.Collections.Concurrent.ConcurrentBag<ITimer>();
        Next(0);
        await done.Task.WaitAsync(s_timeout);
        Volatile.Read(ref fired).Should().Be(Chain);
        Interlocked.Read(ref earliestViolation).Should().Be(0, "never early");
        foreach (ITimer timer in timers)
        {
            timer.Dispose();
        }

        void Next(int i)
        {
            TimerWheel wheel = i % 3 == 0 ? a : b;
            TimeSpan due = TimeSpan.FromMilliseconds(i % 4 == 0 ? 0 : 1);
            long created = Stopwatch.GetTimestamp();
            timers.Add(wheel.CreateTimer(
                _ =>
                {
                    if (Stopwatch.GetElapsedTime(created) < due)
                    {
                        Interlocked.Increment(ref earliestViolation);
                    }

                    if (Interlocked.Increment(ref fired) == Chain)
                    {
                        done.TrySetResult();
                    }
                    else
                    {
                        Next(i + 1);
                    }
                },
                null,
                due,
                Timeout.InfiniteTimeSpan));
        }
    }

    [Fact]
    public async Task Thousands_of_timers_and_delays_with_one_deadline_each_fire_exactly_once_never_early()
    {
        using var wheel = new TimerWheel();
        const int Count = 5000;
        TimeSpan due = TimeSpan.FromMilliseconds(40);
        var counts = new int[Count];
        int total = 0;
        int early = 0;
        var done = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var timers = new ITimer[Count];
        long start = Stopwatch.GetTimestamp();
        for (int i = 0; i < Count; i++)
        {
            int index = i;
            timers[i] = wheel.CreateTimer(
                _ =>
                {
                    if (Stopwatch.GetElapsedTime(start) < due)
                    {
                        Interlocked.Increment(ref early);
                    }

                    Interlocked.Increment(ref counts[index]);
                    if (Interlocked.Increment(ref total) == Count)
                    {
                        done.TrySetResult();
                    }
                },
                null,
                due,
                Timeout.InfiniteTimeSpan);
        }

        int earlyDelays = 0;
        Task delays = Task.Run(async () =>
        {
            long delayStart = Stopwatch.GetTimestamp();
            await Task.WhenAll(Enumerable.Range(0, Count).Select(async _ =>
            {
                await wheel.DelayAsync(due);
                if (Stopwatch.GetElapsedTime(delayStart) < due)
                {
                    Interlocked.Increment(ref earlyDelays);
                }
            }));
        });

        await done.Task.WaitAsync(s_timeout);
        await delays.WaitAsync(s_timeout);
        await Task.Delay(100);
        counts.Should().OnlyContain(c => c == 1);
        Volatile.Read(ref early).Should().Be(0);
        Volatile.Read(ref earlyDelays).Should().Be(0);
        foreach (ITimer timer in timers)
        {
            timer.Dispose();
        }
    }

    [Fact]
    public async Task DelayAsync_cancellation_racing_expiry_always_ends_one_way_or_the_other()
    {
        using var wheel = new TimerWheel();
        int completed = 0;
        int canceled = 0;
        await Task.Run(async () =>
        {
            var random = new Random(12345);
            for (int i = 0; i < 1500; i++)
            {
                // Not disposed: the queued Cancel may run after the await has ended.
                var cts = new CancellationTokenSource();
                ValueTask delay = wheel.DelayAsync(TimeSpan.FromMicroseconds(random.Next(1, 1500)), cts.Token);
                int spin = random.Next(0, 3000);
                Thread.SpinWait(spin);
                if (i % 2 == 0)
                {
                    cts.Cancel();
                }
                else
                {
                    ThreadPool.UnsafeQueueUserWorkItem(static s => s.Cancel(), cts, preferLocal: false);
                }

                try
                {
                    await delay;
                    completed++;
                }
                catch (OperationCanceledException exception)
                {
                    exception.CancellationToken.Should().Be(cts.Token);
                    canceled++;
                }
            }
        }).WaitAsync(TimeSpan.FromSeconds(20));
        (completed + canceled).Should().Be(1500);

        // The slab is still sound: a plain delay after the storm completes, not early.
        long start = Stopwatch.GetTimestamp();
        await wheel.DelayAsync(TimeSpan.FromMilliseconds(5)).AsTask().WaitAsync(s_timeout);
        Stopwatch.GetElapsedTime(start).Should().BeGreaterThanOrEqualTo(TimeSpan.FromMilliseconds(5));
    }

    [Fact]
    public async Task DelayAsync_edge_arguments_behave_as_documented()
    {
        using var wheel = new TimerWheel();
        using var canceled = new CancellationTokenSource();
        canceled.Cancel();

        ValueTask zeroCanceled = wheel.DelayAsync(TimeSpan.Zero, canceled.Token);
        zeroCanceled.IsCanceled.Should().BeTrue("as Task.Delay(0, canceledToken)");
        ValueTask longCanceled = wheel.DelayAsync(TimeSpan.FromDays(1), canceled.Token);
        longCanceled.IsCanceled.Should().BeTrue();
        Func<Task> awaitCanceled = async () => await longCanceled;
        (await awaitCanceled.Should().ThrowAsync<OperationCanceledException>()).Which.CancellationToken.Should().Be(canceled.Token);

        CompletedSuccessfully(wheel.DelayAsync(TimeSpan.Zero)).Should().BeTrue();
        FluentActions.Invoking(() => wheel.DelayAsync(TimeSpan.FromTicks(-1))).Should().Throw<ArgumentOutOfRangeException>().WithParameterName("delay");
        FluentActions.Invoking(() => wheel.DelayAsync(TimeSpan.MinValue)).Should().Throw<ArgumentOutOfRangeException>().WithParameterName("delay");

        foreach (TimeSpan forever in new[] { Timeout.InfiniteTimeSpan, TimeSpan.MaxValue, TimeSpan.FromDays(365 * 100), TimeSpan.FromDays(365 * 2.2) })
        {
            using var cts = new CancellationTokenSource();
            Task pending = wheel.DelayAsync(forever, cts.Token).AsTask();
            await Task.Delay(20);
            pending.IsCompleted.Should().BeFalse($"{forever} is still pending");
            cts.Cancel();
            Func<Task> wait = () => pending.WaitAsync(s_timeout);
            (await wait.Should().ThrowAsync<OperationCanceledException>()).Which.CancellationToken.Should().Be(cts.Token);
        }

        // A sub-tick delay still waits, never completes early.
        long start = Stopwatch.GetTimestamp();
        await wheel.DelayAsync(TimeSpan.FromTicks(1)).AsTask().WaitAsync(s_timeout);
        Stopwatch.GetElapsedTime(start).Should().BeGreaterThanOrEqualTo(TimeSpan.FromTicks(1));
    }

    [Fact]
    public async Task Far_future_timers_do_not_fire_and_the_last_Change_wins()
    {
        for (int attempt = 1; !await Attempt(); attempt++)
        {
            attempt.Should().BeLessThan(5, "the far re-arm returned after the short deadline in every attempt");
        }

        async Task<bool> Attempt()
        {
            using var wheel = new TimerWheel();
            int fired = 0;
            var once = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            TimerCallback callback = _ =>
            {
                Interlocked.Increment(ref fired);
                once.TrySetResult();
            };
            var timers = new List<ITimer>
            {
                wheel.CreateTimer(callback, null, TimeSpan.MaxValue, TimeSpan.MaxValue),
                wheel.CreateTimer(callback, null, TimeSpan.FromDays(365 * 30), Timeout.InfiniteTimeSpan),
                wheel.CreateTimer(callback, null, TimeSpan.FromDays(365 * 2.19), TimeSpan.FromDays(1)),
                wheel.CreateTimer(callback, null, TimeSpan.FromMilliseconds(uint.MaxValue - 1), Timeout.InfiniteTimeSpan),
                wheel.CreateTimer(callback, null, TimeSpan.MaxValue - TimeSpan.FromTicks(1), Timeout.InfiniteTimeSpan),
            };
            await Task.Delay(100);
            Volatile.Read(ref fired).Should().Be(0);

            // Re-armed short, then far again, then short: only the last counts. The clock is read before the short arm:
            // a stall of 5 ms before the far re-arm returned (a preemption or a GC on a loaded machine) may let the short
            // arm fire first, which is allowed; such an attempt proves nothing and is repeated.
            ITimer moved = timers[1];
            long shortArmed = Stopwatch.GetTimestamp();
            moved.Change(TimeSpan.FromMilliseconds(5), Timeout.InfiniteTimeSpan).Should().BeTrue();
            moved.Change(TimeSpan.FromDays(365 * 30), Timeout.InfiniteTimeSpan).Should().BeTrue();
            if (Stopwatch.GetElapsedTime(shortArmed) >= TimeSpan.FromMilliseconds(5))
            {
                timers.ForEach(t => t.Dispose());
                return false;
            }

            await Task.Delay(100);
            Volatile.Read(ref fired).Should().Be(0, "the far re-arm replaced the short one");
            long start = Stopwatch.GetTimestamp();
            moved.Change(TimeSpan.FromMilliseconds(30), Timeout.InfiniteTimeSpan).Should().BeTrue();
            await once.Task.WaitAsync(s_timeout);
            Stopwatch.GetElapsedTime(start).Should().BeGreaterThanOrEqualTo(TimeSpan.FromMilliseconds(30));
            await Task.Delay(100);
            Volatile.Read(ref fired).Should().Be(1);
            foreach (ITimer timer in timers)
            {
                timer.Dispose();
            }

            return true;
        }
    }

    [Fact]
    public async Task TimeProvider_consumers_work_over_the_wheel_and_its_clock_is_consistent()
    {
        using var wheel = new TimerWheel();
        wheel.TimestampFrequency.Should().Be(Stopwatch.Frequency);
        wheel.LocalTimeZone.Should().Be(TimeZoneInfo.Local);
        (wheel.GetUtcNow() - DateTimeOffset.UtcNow).Duration().Should().BeLessThan(TimeSpan.FromSeconds(5));
        long t0 = wheel.GetTimestamp();
        long s0 = Stopwatch.GetTimestamp();
        t0.Should().BeLessThanOrEqualTo(s0, "the wheel's timestamps are Stopwatch's");

        long start = wheel.GetTimestamp();
        await Task.Delay(TimeSpan.FromMilliseconds(15), wheel).WaitAsync(s_timeout);
        wheel.GetElapsedTime(start).Should().BeGreaterThanOrEqualTo(TimeSpan.FromMilliseconds(15));
        await Task.Delay(TimeSpan.Zero, wheel).WaitAsync(s_timeout);

        // The clock is read before the source is made: its 10 ms count from its creation (read after, a timely cancellation
        // measured 9.6 ms in one full run).
        start = Stopwatch.GetTimestamp();
        using (var cts = new CancellationTokenSource(TimeSpan.FromMilliseconds(10), wheel))
        {
            var canceled = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            using CancellationTokenRegistration registration = cts.Token.Register(() => canceled.TrySetResult());
            await canceled.Task.WaitAsync(s_timeout);
            Stopwatch.GetElapsedTime(start).Should().BeGreaterThanOrEqualTo(TimeSpan.FromMilliseconds(10));
        }

        // The clock is read before the first arm: a stall of 20 ms before the last call returned (the thread preempted on
        // a loaded machine) lets a short arm cancel first, which is allowed; such an attempt proves nothing and is repeated
        // with a fresh source.
        for (int attempt = 1; ; attempt++)
        {
            using var cts = new CancellationTokenSource(Timeout.InfiniteTimeSpan, wheel);
            long firstArm = Stopwatch.GetTimestamp();
            cts.CancelAfter(TimeSpan.FromMilliseconds(20));
            cts.CancelAfter(Timeout.InfiniteTimeSpan);
            cts.CancelAfter(TimeSpan.FromMilliseconds(30));
            cts.CancelAfter(TimeSpan.FromDays(1));
            if (Stopwatch.GetElapsedTime(firstArm) < TimeSpan.FromMilliseconds(20))
            {
                await Task.Delay(150);
                cts.IsCancellationRequested.Should().BeFalse("the last CancelAfter wins");
                break;
            }

            attempt.Should().BeLessThan(5, "the last CancelAfter returned after the first one's deadline in every attempt");
        }

        TimeoutException timeout = await FluentActions.Awaiting(() => new TaskCompletionSource().Task.WaitAsync(TimeSpan.FromMilliseconds(10), wheel))
            .Should().ThrowAsync<TimeoutException>().WaitAsync(s_timeout).ContinueWith(t => t.Result.Which);
        timeout.Should().NotBeNull();

        start = Stopwatch.GetTimestamp(); // before the timer: its first period counts from inside the constructor
        using var ticker = new PeriodicTimer(TimeSpan.FromMilliseconds(5), wheel);
        for (int i = 0; i < 4; i++)
        {
            (await ticker.WaitForNextTickAsync().AsTask().WaitAsync(s_timeout)).Should().BeTrue();
        }

        Stopwatch.GetElapsedTime(start).Should().BeGreaterThanOrEqualTo(TimeSpan.FromMilliseconds(20));
        ticker.Dispose();
        (await ticker.WaitForNextTickAsync().AsTask().WaitAsync(s_timeout)).Should().BeFalse();
    }

    [Fact]
    public async Task DisposeAsync_from_another_thread_waits_for_the_running_callback()
    {
        using var wheel = new TimerWheel();
        using var entered = new ManualResetEventSlim();
        using var release = new ManualResetEventSlim();
        int calls = 0;
        ITimer timer = wheel.CreateTimer(
            _ =>
            {
                Interlocked.Increment(ref calls);
                entered.Set();
                release.Wait(s_timeout);
            },
            null,
            TimeSpan.FromMilliseconds(1),
            TimeSpan.FromMilliseconds(1));
        entered.Wait(s_timeout).Should().BeTrue();
        Task disposed = timer.DisposeAsync().AsTask();
        await Task.Delay(50);
        disposed.IsCompleted.Should().BeFalse("a callback is still running");
        release.Set();
        await disposed.WaitAsync(s_timeout);
        int settled = Volatile.Read(ref calls);
        await Task.Delay(100);
        Volatile.Read(ref calls).Should().Be(settled);
        (await timer.DisposeAsync().AsTask().WaitAsync(s_timeout).ContinueWith(t => t.IsCompletedSuccessfully)).Should().BeTrue();
    }

    [Fact]
    public async Task Disposing_the_wheel_from_a_timer_callback_completes_every_pending_delay_and_stops_every_timer()
    {
        var wheel = new TimerWheel();
        const int Delays = 600;
        var cts = new CancellationTokenSource();
        var pending = new List<Task>();
        await Task.Run(() =>
        {
            for (int i = 0; i < Delays; i++)
            {
                TimeSpan delay = (i % 3) switch
                {
                    0 => Timeout.InfiniteTimeSpan,
                    1 => TimeSpan.FromHours(1),
                    _ => TimeSpan.FromMilliseconds(1 + (i % 50)),
                };
                pending.Add(wheel.DelayAsync(delay, i % 2 == 0 ? cts.Token : default).AsTask());
            }
        });

        int fires = 0;
        bool disposeReturned = false;
        int startedAfterDispose = 0;
        var timers = new List<ITimer>();
        for (int i = 0; i < 64; i++)
        {
            timers.Add(wheel.CreateTimer(
                _ =>
                {
                    if (Volatile.Read(ref disposeReturned))
                    {
                        Interlocked.Increment(ref startedAfterDispose);
                    }

                    Interlocked.Increment(ref fires);
                },
                null,
                TimeSpan.FromMilliseconds(1),
                TimeSpan.FromMilliseconds(1)));
        }

        var disposedFromCallback = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        using ITimer killer = wheel.CreateTimer(
            _ =>
            {
                wheel.Dispose();
                Volatile.Write(ref disposeReturned, true);
                disposedFromCallback.TrySetResult();
            },
            null,
            TimeSpan.FromMilliseconds(30),
            Timeout.InfiniteTimeSpan);
        await disposedFromCallback.Task.WaitAsync(s_timeout);
        await Task.WhenAll(pending).Ended().WaitAsync(s_timeout);
        pending.Should().OnlyContain(t => t.IsCompleted, "nothing is left pending by Dispose");
        pending.Where(t => !t.IsCompletedSuccessfully).Should().OnlyContain(
            t => t.IsFaulted && t.Exception!.InnerException is ObjectDisposedException,
            "pending delays complete with ObjectDisposedException");
        pending.Take(Delays).Where((_, i) => i % 3 != 2).Should().OnlyContain(t => t.IsFaulted, "long delays cannot have expired");

        // Callbacks that had started before the Dispose count themselves meanwhile, or later when a loaded machine holds
        // their threads off the cores: settled once none is running.
        await Task.Delay(100);
        _ = TimerCallbacks.WaitUntilIdle(s_timeout, [.. timers]);
        int settled = Volatile.Read(ref fires);
        await Task.Delay(200);
        Volatile.Read(ref fires).Should().Be(settled, "no timer fires after the wheel's Dispose");
        Volatile.Read(ref startedAfterDispose).Should().BeLessThanOrEqualTo(64, "at most a callback already past its check per timer");
        cts.Cancel();
        cts.Dispose();
        wheel.Dispose();
        foreach (ITimer timer in timers)
        {
            timer.Dispose();
        }
    }

    [Fact]
    public async Task Concurrent_wheel_Dispose_storm_with_pending_delays_never_hangs()
    {
        for (int round = 0; round < 10; round++)
        {
            var wheel = new TimerWheel();
            ValueTask[] delays = new ValueTask[200];
            for (int i = 0; i < delays.Length; i++)
            {
                Store(delays, i, wheel.DelayAsync(i % 2 == 0 ? Timeout.InfiniteTimeSpan : TimeSpan.FromMilliseconds(i % 7)));
            }

            // The sources themselves, not AsTask wrappers: a wrapper completes from a continuation queued after the source.
            int notCompletedAfterDispose = 0;
            using var go = new Barrier(4);
            Task[] disposers = Enumerable.Range(0, 4).Select(_ => Task.Factory.StartNew(
                () =>
                {
                    go.SignalAndWait();
                    wheel.Dispose();
                    for (int i = 0; i < delays.Length; i += 2)
                    {
                        if (!IsCompleted(delays[i]))
                        {
                            Interlocked.Increment(ref notCompletedAfterDispose);
                        }
                    }
                },
                CancellationToken.None,
                TaskCreationOptions.LongRunning,
                TaskScheduler.Default)).ToArray();
            await Task.WhenAll(disposers).WaitAsync(s_timeout);
            notCompletedAfterDispose.Should().Be(0, "every Dispose returns only once pending delays are completed");
            Task[] pending = delays.Select(d => d.AsTask()).ToArray();
            await Task.WhenAll(pending).Ended().WaitAsync(s_timeout);
            pending.Where((_, i) => i % 2 == 0).Should().OnlyContain(t => t.IsFaulted && t.Exception!.InnerException is ObjectDisposedException);
            pending.Should().OnlyContain(t => t.IsCompleted);
        }
    }

    [Fact]
    public async Task Reactor_Dispose_completes_pending_reactor_delays_and_stops_its_timers()
    {
        using var scheduler = new WorkStealingTaskScheduler();
        var reactor = new IoReactor(scheduler);
        TimerWheel timers = reactor.Timers;
        var pending = Enumerable.Range(0, 100).Select(i => timers.DelayAsync(i % 2 == 0 ? Timeout.InfiniteTimeSpan : TimeSpan.FromHours(1)).AsTask()).ToList();
        Task onScheduler = scheduler.Factory.StartNew(async () => await timers.DelayAsync(TimeSpan.FromMinutes(5))).Unwrap();
        pending.Add(onScheduler);
        int fires = 0;
        using ITimer periodic = timers.CreateTimer(_ => Interlocked.Increment(ref fires), null, TimeSpan.FromMilliseconds(1), TimeSpan.FromMilliseconds(1));
        SpinWait.SpinUntil(() => Volatile.Read(ref fires) > 3, s_timeout).Should().BeTrue("the reactor drives its wheel");

        await Task.Run(reactor.Dispose).WaitAsync(s_timeout);
        await Task.WhenAll(pending).Ended().WaitAsync(s_timeout);
        pending.Should().OnlyContain(t => t.IsFaulted && t.Exception!.InnerException is ObjectDisposedException);
        FluentActions.Invoking(() => reactor.Timers).Should().Throw<ObjectDisposedException>();
        FluentActions.Invoking(() => timers.DelayAsync(TimeSpan.FromSeconds(1))).Should().Throw<ObjectDisposedException>();

        // A callback that had started before the Dispose counts itself meanwhile, or later when a loaded machine holds its
        // thread off the core: settled once none is running.
        await Task.Delay(100);
        _ = TimerCallbacks.WaitUntilIdle(s_timeout, periodic);
        int settled = Volatile.Read(ref fires);
        await Task.Delay(200);
        Volatile.Read(ref fires).Should().Be(settled, "no timer of the reactor's wheel fires after its Dispose");
    }

    [Theory]
    [InlineData(300)]
    [InlineData(1200)]
    public async Task A_watchdog_pushed_back_continuously_never_fires(int dueMilliseconds)
    {
        // The keep-alive pattern: a timer re-armed long before its deadline, again and again, must never fire.
        // 300 ms arms read the clock in Change; 1.2 s arms are relative (measured by the reconciler).
        using var wheel = new TimerWheel();
        int fired = 0;
        TimeSpan due = TimeSpan.FromMilliseconds(dueMilliseconds);
        using ITimer watchdog = wheel.CreateTimer(_ => Interlocked.Increment(ref fired), null, due, Timeout.InfiniteTimeSpan);
        long maxGapTicks = 0;
        await Task.Factory.StartNew(
            () =>
            {
                long last = Stopwatch.GetTimestamp();
                var total = Stopwatch.StartNew();
                while (total.Elapsed < TimeSpan.FromMilliseconds(dueMilliseconds + 600))
                {
                    watchdog.Change(due, Timeout.InfiniteTimeSpan);
                    long now = Stopwatch.GetTimestamp();
                    maxGapTicks = Math.Max(maxGapTicks, Stopwatch.GetElapsedTime(last, now).Ticks);
                    last = now;
                    Thread.Sleep(1);
                }

                watchdog.Change(Timeout.InfiniteTimeSpan, Timeout.InfiniteTimeSpan);
            },
            CancellationToken.None,
            TaskCreationOptions.LongRunning,
            TaskScheduler.Default).WaitAsync(TimeSpan.FromSeconds(10));
        await Task.Delay(100);
        if (TimeSpan.FromTicks(maxGapTicks) < due / 2)
        {
            Volatile.Read(ref fired).Should().Be(0, $"the watchdog was re-armed at most {TimeSpan.FromTicks(maxGapTicks)} apart, never near its {due} deadline");
        }
    }

    [Fact]
    public async Task DelayAsync_on_a_scheduler_worker_resumes_there_on_expiry_cancellation_and_disposal()
    {
        using var scheduler = new WorkStealingTaskScheduler();
        var wheel = new TimerWheel();
        var outcomes = new System.Collections.Concurrent.ConcurrentQueue<string>();
        int offScheduler = 0;
        var tasks = new List<Task>();
        for (int i = 0; i < 60; i++)
        {
            int kind = i % 3;
            tasks.Add(scheduler.Factory.StartNew(async () =>
            {
                using var cts = new CancellationTokenSource();
                if (kind == 1)
                {
                    cts.CancelAfter(TimeSpan.FromMilliseconds(5));
                }

                try
                {
                    await wheel.DelayAsync(kind switch { 0 => TimeSpan.FromMilliseconds(3), 1 => TimeSpan.FromHours(1), _ => Timeout.InfiniteTimeSpan }, cts.Token);
                    outcomes.Enqueue("done");
                }
                catch (OperationCanceledException)
                {
                    outcomes.Enqueue("canceled");
                }
                catch (ObjectDisposedException)
                {
                    outcomes.Enqueue("disposed");
                }

                if (TaskScheduler.Current != scheduler)
                {
                    Interlocked.Increment(ref offScheduler);
                }
            }).Unwrap());
        }

        SpinWait.SpinUntil(() => outcomes.Count >= 40, s_timeout).Should().BeTrue("expiries and cancellations complete");
        await Task.Delay(20);
        await Task.Run(wheel.Dispose).WaitAsync(s_timeout);
        await Task.WhenAll(tasks).WaitAsync(s_timeout);
        outcomes.Count(o => o == "done").Should().Be(20);
        outcomes.Count(o => o == "canceled").Should().Be(20);
        outcomes.Count(o => o == "disposed").Should().Be(20);
        Volatile.Read(ref offScheduler).Should().Be(0, "every outcome resumes on the awaiting scheduler");
    }

    [Fact]
    public async Task Disposing_reactor_Timers_alone_completes_its_delays_and_the_reactor_still_disposes()
    {
        using var scheduler = new WorkStealingTaskScheduler();
        var reactor = new IoReactor(scheduler);
        TimerWheel timers = reactor.Timers;
        Task pending = timers.DelayAsync(Timeout.InfiniteTimeSpan).AsTask();
        await timers.DelayAsync(TimeSpan.FromMilliseconds(2)).AsTask().WaitAsync(s_timeout);
        await Task.Run(timers.Dispose).WaitAsync(s_timeout);
        Func<Task> wait = () => pending.WaitAsync(s_timeout);
        await wait.Should().ThrowAsync<ObjectDisposedException>();
        await Task.Run(reactor.Dispose).WaitAsync(s_timeout);
    }

    [Fact]
    public async Task Timers_beyond_a_tiny_ticks_wheel_span_fire_once_at_their_deadline_on_a_manual_clock()
    {
        // A 100 ns tick: the wheel's span (2^36 ticks) is under two hours, so hours and days are clamped on the top
        // level and re-placed as they come near; levels are crossed at exact boundaries too.
        var clock = new ManualClock();
        TimeSpan tick = TimeSpan.FromTicks(1);
        using var wheel = new TimerWheel(tick, clock, startDriver: false);
        long start = clock.Now;
        var dues = new List<TimeSpan>();
        for (int level = 1; level <= 6; level++)
        {
            long boundary = 1L << (6 * level);
            foreach (long ticks in new[] { boundary - 1, boundary, boundary + 1 })
            {
                dues.Add(TimeSpan.FromTicks(ticks));
            }
        }

        dues.AddRange(new[] { TimeSpan.FromHours(2), TimeSpan.FromHours(3.9), TimeSpan.FromDays(1), TimeSpan.FromDays(40) });
        int count = dues.Count;
        var firedAt = new long[count];
        var fireCounts = new int[count];
        var timers = new ITimer[count];
        for (int i = 0; i < count; i++)
        {
            int index = i;
            timers[i] = wheel.CreateTimer(
                _ =>
                {
                    Volatile.Write(ref firedAt[index], clock.Now);
                    Interlocked.Increment(ref fireCounts[index]);
                },
                null,
                dues[i],
                Timeout.InfiniteTimeSpan);
        }

        wheel.RunDueTimers();
        int runs = 0;
        await Task.Run(() =>
        {
            while (wheel.PendingCount > 0 && runs < 100_000)
            {
                wheel.TryGetNextWakeTimestamp(out long next).Should().BeTrue();
                if (next > clock.Now)
                {
                    clock.AdvanceUnits(next - clock.Now);
                }

                wheel.RunDueTimers();
                runs++;
                long now = clock.Now;
                int due = dues.Count(d => start + StopwatchUnits.From(d) <= now);
                SpinWait.SpinUntil(() => fireCounts.Sum() >= due, s_timeout).Should().BeTrue("every due timer's callback runs");
            }
        }).WaitAsync(TimeSpan.FromSeconds(20));

        long tickUnits = StopwatchUnits.From(tick);
        for (int i = 0; i < count; i++)
        {
            long deadline = start + StopwatchUnits.From(dues[i]);
            fireCounts[i].Should().Be(1, $"timer due in {dues[i]}");
            firedAt[i].Should().BeGreaterThanOrEqualTo(deadline, $"never early ({dues[i]})");
            (firedAt[i] - deadline).Should().BeLessThanOrEqualTo(tickUnits, $"at most a tick late ({dues[i]})");
        }

        foreach (ITimer timer in timers)
        {
            timer.Dispose();
        }
    }

    [Fact]
    public async Task After_DisposeAsync_completes_no_callback_is_running_or_starts()
    {
        using var wheel = new TimerWheel();
        int violations = 0;
        await Task.Run(async () =>
        {
            for (int i = 0; i < 150; i++)
            {
                int inside = 0;
                int done = 0;
                using var firedOnce = new ManualResetEventSlim();
                ITimer timer = wheel.CreateTimer(
                    _ =>
                    {
                        Interlocked.Increment(ref inside);
                        if (Volatile.Read(ref done) != 0)
                        {
                            Interlocked.Increment(ref violations);
                        }

                        firedOnce.Set();
                        Thread.SpinWait(2000);
                        Interlocked.Decrement(ref inside);
                    },
                    null,
                    TimeSpan.Zero,
                    TimeSpan.FromMilliseconds(1));
                firedOnce.Wait(s_timeout);
                Thread.SpinWait(i * 50);
                await timer.DisposeAsync();
                if (Volatile.Read(ref inside) != 0)
                {
                    Interlocked.Increment(ref violations);
                }

                Volatile.Write(ref done, 1);
            }

            await Task.Delay(50);
        }).WaitAsync(TimeSpan.FromSeconds(20));
        Volatile.Read(ref violations).Should().Be(0, "DisposeAsync waits for a running callback and none starts after it");
    }

    [Fact]
    public async Task After_a_storm_of_mixed_Changes_the_last_one_wins()
    {
        using var wheel = new TimerWheel();
        int calls = 0;
        object state = new();
        int wrongState = 0;
        using ITimer timer = wheel.CreateTimer(
            s =>
            {
                if (!ReferenceEquals(s, state))
                {
                    Interlocked.Increment(ref wrongState);
                }

                Interlocked.Increment(ref calls);
            },
            state,
            TimeSpan.FromMilliseconds(1),
            TimeSpan.FromMilliseconds(1));
        await Task.WhenAll(Enumerable.Range(0, 3).Select(t => Task.Run(() =>
        {
            var random = new Random(t);
            for (int i = 0; i < 20_000; i++)
            {
                _ = random.Next(6) switch
                {
                    0 => timer.Change(TimeSpan.Zero, TimeSpan.FromMilliseconds(random.Next(1, 4))),
                    1 => timer.Change(TimeSpan.FromMilliseconds(random.Next(0, 3)), Timeout.InfiniteTimeSpan),
                    2 => timer.Change(TimeSpan.FromSeconds(random.Next(1, 3)), TimeSpan.FromMilliseconds(2)),
                    3 => timer.Change(Timeout.InfiniteTimeSpan, Timeout.InfiniteTimeSpan),
                    4 => timer.Change(TimeSpan.FromMilliseconds(1), TimeSpan.FromTicks(random.Next(1, 30_000))),
                    _ => timer.Change(TimeSpan.FromHours(1), TimeSpan.FromHours(1)),
                };
            }
        }))).WaitAsync(s_timeout);

        timer.Change(Timeout.InfiniteTimeSpan, Timeout.InfiniteTimeSpan).Should().BeTrue();
        await Task.Delay(150);

        // A firing queued before the stop may still run, later than 150 ms on a loaded machine: settled once none is queued or running.
        _ = TimerCallbacks.WaitUntilIdle(s_timeout, timer);
        int stopped = Volatile.Read(ref calls);
        await Task.Delay(200);
        Volatile.Read(ref calls).Should().Be(stopped, "the final stop wins over every change of the storm");

        long start = Stopwatch.GetTimestamp();
        timer.Change(TimeSpan.FromMilliseconds(20), Timeout.InfiniteTimeSpan).Should().BeTrue();
        SpinWait.SpinUntil(() => Volatile.Read(ref calls) > stopped, s_timeout).Should().BeTrue("the final one-shot arm fires");
        Stopwatch.GetElapsedTime(start).Should().BeGreaterThanOrEqualTo(TimeSpan.FromMilliseconds(20));
        await Task.Delay(200);
        Volatile.Read(ref calls).Should().Be(stopped + 1, "a one-shot: no leftover period of the storm");
        Volatile.Read(ref wrongState).Should().Be(0);
    }

    [Fact]
    public async Task Arms_around_the_one_second_relative_threshold_are_never_early()
    {
        using var wheel = new TimerWheel();
        TimeSpan[] dues = { TimeSpan.FromSeconds(1) - TimeSpan.FromTicks(1), TimeSpan.FromSeconds(1), TimeSpan.FromSeconds(1) + TimeSpan.FromTicks(1), TimeSpan.FromSeconds(1.05) };
        TimeSpan period = TimeSpan.FromMilliseconds(40);
        const int Firings = 3;
        var firedAt = new long[dues.Length, Firings];
        var counts = new int[dues.Length];
        var timers = new ITimer[dues.Length];
        var starts = new long[dues.Length];
        using var countdown = new CountdownEvent(dues.Length * Firings);
        for (int i = 0; i < dues.Length; i++)
        {
            int index = i;
            timers[i] = wheel.CreateTimer(
                _ =>
                {
                    long now = Stopwatch.GetTimestamp();
                    int n = Interlocked.Increment(ref counts[index]) - 1;
                    if (n < Firings)
                    {
                        firedAt[index, n] = now;
                        countdown.Signal();
                    }
                },
                null,
                Timeout.InfiniteTimeSpan,
                Timeout.InfiniteTimeSpan);

            // Armed by Change (the relative path for 1 s or more), not at creation.
            starts[i] = Stopwatch.GetTimestamp();
            timers[i].Change(dues[i], period).Should().BeTrue();
        }

        await Task.Run(() => countdown.Wait(s_timeout).Should().BeTrue()).WaitAsync(s_timeout);
        foreach (ITimer timer in timers)
        {
            timer.Dispose();
        }

        for (int i = 0; i < dues.Length; i++)
        {
            for (int k = 0; k < Firings; k++)
            {
                Stopwatch.GetElapsedTime(starts[i], firedAt[i, k]).Should().BeGreaterThanOrEqualTo(dues[i] + (k * period), $"due {dues[i]}, firing {k}");
            }
        }
    }

    [Fact]
    public async Task Reactor_Timers_first_used_while_the_reactor_is_disposed_never_strands_a_delay()
    {
        using var scheduler = new WorkStealingTaskScheduler();
        for (int round = 0; round < 20; round++)
        {
            var reactor = new IoReactor(scheduler);
            using var go = new Barrier(2);
            Task<Task?> user = Task.Factory.StartNew(
                () =>
                {
                    go.SignalAndWait();
                    try
                    {
                        return reactor.Timers.DelayAsync(Timeout.InfiniteTimeSpan).AsTask();
                    }
                    catch (ObjectDisposedException)
                    {
                        return null;
                    }
                },
                CancellationToken.None,
                TaskCreationOptions.LongRunning,
                TaskScheduler.Default);
            Task disposer = Task.Factory.StartNew(
                () =>
                {
                    go.SignalAndWait();
                    reactor.Dispose();
                },
                CancellationToken.None,
                TaskCreationOptions.LongRunning,
                TaskScheduler.Default);
            await disposer.WaitAsync(s_timeout);
            Task? delay = await user.WaitAsync(s_timeout);
            if (delay is not null)
            {
                Func<Task> wait = () => delay.WaitAsync(s_timeout);
                await wait.Should().ThrowAsync<ObjectDisposedException>($"round {round}: a wheel created during the reactor's disposal is disposed too");
            }
        }
    }

    private static bool CompletedSuccessfully(ValueTask task) => task.IsCompletedSuccessfully;

    private static bool IsCompleted(ValueTask task) => task.IsCompleted;

    private static void Store(ValueTask[] array, int index, ValueTask task) => array[index] = task;
}
