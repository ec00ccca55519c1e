using System.Diagnostics;
using System.Runtime.CompilerServices;
using Scheduler.Tests.Scheduling;
using Scheduler.Timers;

namespace Scheduler.Tests.Timers;

/// <summary>
/// Adversarial checks of the merging of a wheel timer's not-yet-started callbacks (WheelTimer's QueuedBit): the bit never
/// stays set (a later firing always starts a callback), started callbacks still overlap, DisposeAsync still waits for a
/// running callback and not for a queued one, and the captured context still flows. One test starves the ThreadPool, so
/// the class runs alone.
/// </summary>
[Collection(SerialResourceGroup.Name)]
public sealed class AdversarialTimerCoalescingTests
{
    private static readonly TimeSpan s_timeout = TimeSpan.FromSeconds(10);

    [Fact]
    public async Task A_callback_that_fires_its_timer_again_now_with_Change_zero_keeps_the_chain_going()
    {
        using var wheel = new TimerWheel();
        int calls = 0;
        var done = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        using var created = new ManualResetEventSlim();
        ITimer? timer = null;
        timer = wheel.CreateTimer(
            _ =>
            {
                created.Wait();
                if (Interlocked.Increment(ref calls) >= 300)
                {
                    done.TrySetResult();
                    return;
                }

                // Twice: the second merges into the first (queued, not started), and neither may leave the bit set.
                timer!.Change(TimeSpan.Zero, Timeout.InfiniteTimeSpan);
                timer!.Change(TimeSpan.Zero, Timeout.InfiniteTimeSpan);
            },
            null,
            Timeout.InfiniteTimeSpan,
            Timeout.InfiniteTimeSpan);
        created.Set();
        timer.Change(TimeSpan.Zero, Timeout.InfiniteTimeSpan);
        await done.Task.WaitAsync(s_timeout);
        await timer.DisposeAsync().AsTask().WaitAsync(s_timeout);
    }

    [Fact]
    public async Task Change_zero_racing_from_many_threads_always_starts_a_callback_after_the_last_change_of_each_round()
    {
        using var wheel = new TimerWheel();
        long lastStart = 0;
        int calls = 0;
        ITimer timer = wheel.CreateTimer(
            _ =>
            {
                Volatile.Write(ref lastStart, Stopwatch.GetTimestamp());
                Interlocked.Increment(ref calls);
            },
            null,
            Timeout.InfiniteTimeSpan,
            Timeout.InfiniteTimeSpan);
        const int Threads = 4;
        for (int round = 0; round < 100; round++)
        {
            using var barrier = new Barrier(Threads);
            var changers = new Thread[Threads];
            long[] changedAt = new long[Threads];
            for (int t = 0; t < Threads; t++)
            {
                int index = t;
                changers[t] = new Thread(() =>
                {
                    barrier.SignalAndWait();
                    for (int i = 0; i < 20; i++)
                    {
                        Volatile.Write(ref changedAt[index], Stopwatch.GetTimestamp());
                        timer.Change(TimeSpan.Zero, Timeout.InfiniteTimeSpan).Should().BeTrue();
                    }
                });
                changers[t].Start();
            }

            foreach (Thread changer in changers)
            {
                changer.Join();
            }

            long lastChange = changedAt.Max();
            var deadline = Stopwatch.GetTimestamp() + StopwatchUnits.From(s_timeout);
            while (Volatile.Read(ref lastStart) <= lastChange)
            {
                Stopwatch.GetTimestamp().Should().BeLessThan(deadline, $"round {round}: the last Change(0) must be followed by a callback that starts after it");
                await Task.Delay(1);
            }
        }

        Volatile.Read(ref calls).Should().BeLessThanOrEqualTo(100 * Threads * 20);
        await timer.DisposeAsync().AsTask().WaitAsync(s_timeout);
    }

    [Fact]
    public async Task A_periodic_timers_callbacks_that_outlast_the_period_still_overlap()
    {
        using var wheel = new TimerWheel();
        int running = 0;
        int maxRunning = 0;
        int calls = 0;
        using ITimer timer = wheel.CreateTimer(
            _ =>
            {
                int now = Interlocked.Increment(ref running);
                int seen;
                while (now > (seen = Volatile.Read(ref maxRunning)) && Interlocked.CompareExchange(ref maxRunning, now, seen) != seen)
                {
                }

                Interlocked.Increment(ref calls);
                Thread.Sleep(60);
                Interlocked.Decrement(ref running);
            },
            null,
            TimeSpan.FromMilliseconds(2),
            TimeSpan.FromMilliseconds(10));
        // Waited for generously: the overlap needs a second ThreadPool thread while the first callback sleeps, which a loaded
        // machine (other tests holding the pool's threads) can take seconds to provide.
        var deadline = DateTime.UtcNow + s_timeout;
        while (Volatile.Read(ref maxRunning) < 2 && DateTime.UtcNow < deadline)
        {
            await Task.Delay(10);
        }

        timer.Change(Timeout.InfiniteTimeSpan, Timeout.InfiniteTimeSpan);
        Volatile.Read(ref maxRunning).Should().BeGreaterThanOrEqualTo(2, "only callbacks not yet started merge: a started one does not hold back the next tick");
        await timer.DisposeAsync().AsTask().WaitAsync(s_timeout);
        Volatile.Read(ref running).Should().Be(0, "DisposeAsync waits for every running callback");
    }

    [Fact]
    public async Task DisposeAsync_waits_for_a_running_callback_and_then_a_new_tick_queued_meanwhile_never_runs()
    {
        using var wheel = new TimerWheel();
        using var entered = new ManualResetEventSlim();
        using var release = new ManualResetEventSlim();
        int calls = 0;
        int finished = 0;
        ITimer? timer = null;
        using var created = new ManualResetEventSlim();
        timer = wheel.CreateTimer(
            _ =>
            {
                created.Wait();
                if (Interlocked.Increment(ref calls) == 1)
                {
                    // Queued while this one runs: it must not merge into this running one, and must not run after the disposal.
                    timer!.Change(TimeSpan.Zero, Timeout.InfiniteTimeSpan);
                    entered.Set();
                    release.Wait();
                    Volatile.Write(ref finished, 1);
                }
            },
            null,
            Timeout.InfiniteTimeSpan,
            Timeout.InfiniteTimeSpan);
        created.Set();
        timer.Change(TimeSpan.Zero, Timeout.InfiniteTimeSpan);
        entered.Wait(s_timeout).Should().BeTrue();

        // The second callback (queued from the first) gets a thread of its own and runs while the first is held.
        var deadline = DateTime.UtcNow + s_timeout;
        while (Volatile.Read(ref calls) < 2)
        {
            DateTime.UtcNow.Should().BeBefore(deadline, "a callback queued from a running one is not merged into it");
            await Task.Delay(1);
        }

        timer.Change(TimeSpan.Zero, Timeout.InfiniteTimeSpan);
        Task disposal = timer.DisposeAsync().AsTask();
        await Task.Delay(50);
        disposal.IsCompleted.Should().BeFalse("the first callback is still running");
        release.Set();
        await disposal.WaitAsync(s_timeout);
        Volatile.Read(ref finished).Should().Be(1);
        int settled = Volatile.Read(ref calls);
        await Task.Delay(50);
        Volatile.Read(ref calls).Should().Be(settled, "nothing starts after the disposal");
    }

    [Fact]
    public async Task DisposeAsync_with_a_callback_queued_but_not_started_completes_at_once_and_the_callback_never_runs()
    {
        using var wheel = new TimerWheel();
        int calls = 0;
        ITimer timer = wheel.CreateTimer(_ => Interlocked.Increment(ref calls), null, Timeout.InfiniteTimeSpan, Timeout.InfiniteTimeSpan);
        ValueTask disposal;
        using (ThreadPoolStarvation.Begin())
        {
            timer.Change(TimeSpan.Zero, Timeout.InfiniteTimeSpan);
            timer.Change(TimeSpan.Zero, Timeout.InfiniteTimeSpan);
            disposal = timer.DisposeAsync();

            // Completed with no thread free: it waits for running callbacks, and the queued one has not started.
            disposal.IsCompleted.Should().BeTrue("a callback that has not started is not running");
        }

        await disposal;
        await Task.Delay(100);
        Volatile.Read(ref calls).Should().Be(0, "the callback queued before the disposal starts after it and returns at once");
    }

    [Fact]
    public async Task The_callback_runs_in_the_context_captured_at_creation_whoever_fires_it_now()
    {
        using var wheel = new TimerWheel();
        var local = new AsyncLocal<string?>();
        string?[] seen = new string?[3];
        int calls = 0;
        var done = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        local.Value = "creator";
        ITimer timer = wheel.CreateTimer(
            _ =>
            {
                int n = Interlocked.Increment(ref calls);
                if (n <= seen.Length)
                {
                    seen[n - 1] = local.Value;
                }

                local.Value = "callback"; // must not leak into the next callback
                if (n == seen.Length)
                {
                    done.TrySetResult();
                }
            },
            null,
            Timeout.InfiniteTimeSpan,
            Timeout.InfiniteTimeSpan);
        local.Value = null;
        for (int i = 0; i < seen.Length; i++)
        {
            int before = Volatile.Read(ref calls);
            await Task.Run(() =>
            {
                local.Value = "changer";
                timer.Change(TimeSpan.Zero, Timeout.InfiniteTimeSpan);
            });
            var deadline = DateTime.UtcNow + s_timeout;
            while (Volatile.Read(ref calls) == before)
            {
                DateTime.UtcNow.Should().BeBefore(deadline);
                await Task.Delay(1);
            }
        }

        await done.Task.WaitAsync(s_timeout);
        seen.Should().AllBe("creator");
        await timer.DisposeAsync().AsTask().WaitAsync(s_timeout);
    }

    [Fact]
    public async Task Thousands_of_timers_fired_now_twice_from_racing_threads_each_run_once_or_twice_per_round_and_never_stick()
    {
        using var wheel = new TimerWheel();
        const int Count = 3000;
        var timers = new ITimer[Count];
        var boxes = new StrongBox<int>[Count];
        for (int i = 0; i < Count; i++)
        {
            boxes[i] = new StrongBox<int>();
            timers[i] = wheel.CreateTimer(static s => Interlocked.Increment(ref ((StrongBox<int>)s!).Value), boxes[i], Timeout.InfiniteTimeSpan, Timeout.InfiniteTimeSpan);
        }

        for (int round = 1; round <= 3; round++)
        {
            int[] before = boxes.Select(b => Volatile.Read(ref b.Value)).ToArray();
            Parallel.For(0, 2 * Count, new ParallelOptions { MaxDegreeOfParallelism = 2 }, k => timers[k % Count].Change(TimeSpan.Zero, Timeout.InfiniteTimeSpan));
            var deadline = DateTime.UtcNow + s_timeout;
            while (Enumerable.Range(0, Count).Any(i => Volatile.Read(ref boxes[i].Value) <= before[i]))
            {
                DateTime.UtcNow.Should().BeBefore(deadline, $"round {round}: every timer fired now runs a callback");
                await Task.Delay(5);
            }

        }

        await Task.Delay(50);
        boxes.Max(b => Volatile.Read(ref b.Value)).Should().BeLessThanOrEqualTo(6, "two Change(0)s per round start at most two callbacks");
        foreach (ITimer timer in timers)
        {
            await timer.DisposeAsync();
        }
    }
}
