using System.Diagnostics;
using Scheduler.IO;
using Scheduler.Tests.Timers;
using Scheduler.Timers;

// These tests hold ValueTasks on purpose (pending delays).
#pragma warning disable CA2012

namespace Scheduler.Tests.IO;

/// <summary><see cref="IoReactor.Timers"/>: a timer wheel driven by the reactor's own epoll_wait instead of a thread.</summary>
public sealed class ReactorTimersTests
{
    [Fact]
    public async Task Timers_is_created_once_on_first_use_and_shared_by_every_caller()
    {
        await using var io = new IoTestContext();
        var seen = new TimerWheel[8];
        using var start = new Barrier(seen.Length);
        Parallel.For(0, seen.Length, new ParallelOptions { MaxDegreeOfParallelism = seen.Length }, i =>
        {
            start.SignalAndWait();
            seen[i] = io.Reactor.Timers;
        });

        seen.Distinct().Should().ContainSingle();
        TimerWheel wheel = seen[0];
        wheel.Should().BeSameAs(io.Reactor.Timers);
        wheel.IsHosted.Should().BeTrue("the reactor's thread drives it: no driver thread of its own");
        wheel.TickDuration.Should().Be(TimeSpan.FromMilliseconds(1));

        // Once created, reading it costs nothing: no wheel made and thrown away per read. Kills: IoReactor.cs Timers,
        // `Volatile.Read(ref _timers) ?? CreateTimers()` made `CreateTimers()` (the race's loser path every time).
        long before = GC.GetAllocatedBytesForCurrentThread();
        for (int i = 0; i < 100; i++)
        {
            _ = io.Reactor.Timers;
        }

        (GC.GetAllocatedBytesForCurrentThread() - before).Should().Be(0, "reading Timers again allocates nothing");
    }

    [Fact]
    public async Task Delays_complete_after_their_time_and_never_before()
    {
        await using var io = new IoTestContext();
        TimerWheel wheel = io.Reactor.Timers;
        int early = await RandomDelays.CountEarlyAsync(wheel, 20_000, maxMicroseconds: 30_000, seed: 11);
        early.Should().Be(0);
        wheel.PendingCount.Should().Be(0);
    }

    [Fact]
    public async Task Delays_resume_on_the_awaiting_worker_never_on_the_reactor_thread()
    {
        await using var io = new IoTestContext();
        TimerWheel wheel = io.Reactor.Timers;

        // Keep the other worker busy: an idle peer may legitimately steal from the owner's inbox.
        using var release = new ManualResetEventSlim();
        using var blocked = new ManualResetEventSlim();
        Task blocker = io.Scheduler.Factory.StartNew(() =>
        {
            blocked.Set();
            release.Wait();
        });
        blocked.Wait(IoTestContext.Timeout).Should().BeTrue();

        List<(bool SameWorker, string? Thread)> results;
        try
        {
            results = await io.Run(async () =>
            {
                var outcomes = new List<(bool, string?)>();
                for (int i = 0; i < 20; i++)
                {
                    io.Scheduler.TryGetCurrentWorkerIndex(out int before);
                    await wheel.DelayAsync(TimeSpan.FromMilliseconds(1));
                    bool onScheduler = io.Scheduler.TryGetCurrentWorkerIndex(out int after);
                    outcomes.Add((onScheduler && before == after, Thread.CurrentThread.Name));
                }

                return outcomes;
            });
        }
        finally
        {
            // Also when the delays fail: a worker still blocked here would hang the scheduler's disposal.
            release.Set();
        }

        await blocker.WaitAsync(IoTestContext.Timeout);

        results.Should().OnlyContain(r => r.SameWorker);
        results.Should().NotContain(r => r.Thread == "IoReactor");
    }

    [Fact]
    public async Task A_change_made_while_the_reactor_sleeps_wakes_it_in_time()
    {
        await using var io = new IoTestContext();
        TimerWheel wheel = io.Reactor.Timers;

        // A far timer makes the reactor plan a long sleep; each short delay armed afterwards, from threads that are
        // not the reactor's, has to wake it (a lowered reconcile request, or an insert due before the plan).
        ValueTask far = wheel.DelayAsync(TimeSpan.FromMinutes(10));
        for (int round = 0; round < 50; round++)
        {
            await Task.Delay(round % 5); // let the reactor go back to sleep now and then
            long start = Stopwatch.GetTimestamp();
            await Task.WhenAll(Enumerable.Range(0, 4).Select(i => Task.Run(async () => await wheel.DelayAsync(TimeSpan.FromMilliseconds(1 + i)))))
                .WaitAsync(IoTestContext.Timeout);
            Stopwatch.GetElapsedTime(start).Should().BeGreaterThanOrEqualTo(TimeSpan.FromMilliseconds(4));
        }

        far.IsCompleted.Should().BeFalse();
        io.Reactor.Dispose();
        await FluentActions.Awaiting(() => far.AsTask().WaitAsync(IoTestContext.Timeout)).Should().ThrowAsync<ObjectDisposedException>();
    }

    [Fact]
    public async Task Timers_armed_from_many_threads_in_bursts_all_fire_none_early()
    {
        await using var io = new IoTestContext();
        TimerWheel wheel = io.Reactor.Timers;

        // Bursts of more than a batch of pushes (TimerWheel.ReconcileBatch), so that pushing threads also reconcile
        // inline and insert timers due before the sleeping reactor's plan (the wake-up from under the wheel lock).
        const int Threads = 4;
        const int PerThread = 3_000;
        int fired = 0;
        int early = 0;
        var done = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var timers = new List<ITimer>();
        var workers = Enumerable.Range(0, Threads).Select(t => Task.Run(() =>
        {
            var random = new Random(t);
            var mine = new List<ITimer>(PerThread);
            for (int i = 0; i < PerThread; i++)
            {
                long armedAt = Stopwatch.GetTimestamp();
                TimeSpan due = TimeSpan.FromMicroseconds(random.Next(100, 20_000));
                mine.Add(wheel.CreateTimer(
                    _ =>
                    {
                        if (Stopwatch.GetElapsedTime(armedAt) < due)
                        {
                            Interlocked.Increment(ref early);
                        }

                        if (Interlocked.Increment(ref fired) == Threads * PerThread)
                        {
                            done.TrySetResult();
                        }
                    },
                    null,
                    due,
                    Timeout.InfiniteTimeSpan));
            }

            return mine;
        })).ToArray();
        foreach (List<ITimer> mine in await Task.WhenAll(workers))
        {
            timers.AddRange(mine);
        }

        await done.Task.WaitAsync(IoTestContext.Timeout);
        fired.Should().Be(Threads * PerThread);
        early.Should().Be(0);
        timers.ForEach(t => t.Dispose());
    }

    [Fact]
    public async Task TimeProvider_consumers_work_on_the_reactor_wheel()
    {
        await using var io = new IoTestContext();
        TimerWheel wheel = io.Reactor.Timers;

        long start = Stopwatch.GetTimestamp();
        await Task.Delay(TimeSpan.FromMilliseconds(20), wheel).WaitAsync(IoTestContext.Timeout);
        Stopwatch.GetElapsedTime(start).Should().BeGreaterThanOrEqualTo(TimeSpan.FromMilliseconds(20));

        start = Stopwatch.GetTimestamp(); // before the source arms its timer: a preemption in between must not count
        using var cts = new CancellationTokenSource(TimeSpan.FromMilliseconds(30), wheel);
        await FluentActions.Awaiting(() => Task.Delay(Timeout.InfiniteTimeSpan, cts.Token).WaitAsync(IoTestContext.Timeout)).Should().ThrowAsync<OperationCanceledException>();
        Stopwatch.GetElapsedTime(start).Should().BeGreaterThanOrEqualTo(TimeSpan.FromMilliseconds(30));

        int ticks = 0;
        using var ticked = new SemaphoreSlim(0);
        using (ITimer periodic = wheel.CreateTimer(_ => { Interlocked.Increment(ref ticks); ticked.Release(); }, null, TimeSpan.FromMilliseconds(5), TimeSpan.FromMilliseconds(5)))
        {
            for (int i = 0; i < 3; i++)
            {
                (await ticked.WaitAsync(IoTestContext.Timeout)).Should().BeTrue();
            }
        }

        ticks.Should().BeGreaterThanOrEqualTo(3);
    }

    [Fact]
    public async Task A_receive_timeout_cancels_the_receive_and_leaves_the_socket_usable()
    {
        await using var io = new IoTestContext();
        using ReactorSocket listener = io.Listen();
        await io.RunOnPair(listener, async (client, server) =>
        {
            var buffer = new byte[16];
            long start = Stopwatch.GetTimestamp(); // before the source arms its timer
            using (var timeout = new CancellationTokenSource(TimeSpan.FromMilliseconds(50), io.Reactor.Timers))
            {
                Func<Task> receive = async () => await server.ReceiveAsync(buffer, timeout.Token);
                (await receive.Should().ThrowAsync<OperationCanceledException>()).Which.CancellationToken.Should().Be(timeout.Token);
                Stopwatch.GetElapsedTime(start).Should().BeGreaterThanOrEqualTo(TimeSpan.FromMilliseconds(50));
            }

            await client.SendAsync(new byte[] { 4, 5, 6 });
            using var generous = new CancellationTokenSource(TimeSpan.FromSeconds(30), io.Reactor.Timers);
            (await server.ReceiveAsync(buffer, generous.Token)).Should().Be(3);
            buffer.AsSpan(0, 3).ToArray().Should().Equal(4, 5, 6);
        });
    }

    [Fact]
    public async Task Sockets_carry_exact_bytes_while_every_receive_arms_and_disarms_a_timeout_and_delays_fire()
    {
        await using var io = new IoTestContext();
        using ReactorSocket listener = io.Listen();
        TimerWheel wheel = io.Reactor.Timers;
        const int Messages = 2_000;
        await io.RunOnPair(listener, async (client, server) =>
        {
            // Delays firing all along on the same thread that dispatches the sockets' readiness.
            var random = new Random(5);
            Task delays = Task.WhenAll(Enumerable.Range(0, 2_000).Select(i => wheel.DelayAsync(TimeSpan.FromMicroseconds(random.Next(1, 200_000))).AsTask()));

            Task echo = Task.Run(async () =>
            {
                using var timeout = new CancellationTokenSource(Timeout.InfiniteTimeSpan, wheel);
                var buffer = new byte[64];
                while (true)
                {
                    // The timeout pattern: arm, then disarm on success. (TryReset cannot be used here: it returns
                    // false for a source created with any TimeProvider but the system one, a BCL limitation.)
                    timeout.CancelAfter(TimeSpan.FromSeconds(30));
                    int n = await server.ReceiveAsync(buffer, timeout.Token);
                    timeout.CancelAfter(Timeout.InfiniteTimeSpan);
                    if (n == 0)
                    {
                        return;
                    }

                    await server.SendAsync(buffer.AsMemory(0, n));
                }
            });

            var echoed = new byte[8];
            for (int i = 0; i < Messages; i++)
            {
                byte[] message = BitConverter.GetBytes((long)i);
                await client.SendAsync(message);
                await IoTestContext.ReceiveExactlyAsync(client, echoed);
                echoed.Should().Equal(message);
            }

            client.Shutdown(System.Net.Sockets.SocketShutdown.Send);
            await echo.WaitAsync(IoTestContext.Timeout);
            await delays.WaitAsync(IoTestContext.Timeout);
        }, timeout: TimeSpan.FromSeconds(90)); // 2,000 round trips: well under a second idle, over 20 s seen under a load of 25 on 2 cores
        wheel.PendingCount.Should().Be(0);
    }

    [Fact]
    public async Task Disposing_the_reactor_completes_pending_delays_with_ObjectDisposedException_and_Timers_then_throws()
    {
        await using var io = new IoTestContext();
        TimerWheel wheel = io.Reactor.Timers;
        Task[] pending = Enumerable.Range(0, 100).Select(i => wheel.DelayAsync(TimeSpan.FromMinutes(1 + i)).AsTask()).ToArray();
        using var cts = new CancellationTokenSource(TimeSpan.FromMinutes(5), wheel);

        io.Reactor.Dispose();

        foreach (Task delay in pending)
        {
            await FluentActions.Awaiting(() => delay.WaitAsync(IoTestContext.Timeout)).Should().ThrowAsync<ObjectDisposedException>();
        }

        FluentActions.Invoking(() => io.Reactor.Timers).Should().Throw<ObjectDisposedException>();
        FluentActions.Invoking(() => wheel.DelayAsync(TimeSpan.FromSeconds(1))).Should().Throw<ObjectDisposedException>();
        cts.IsCancellationRequested.Should().BeFalse("a disposed wheel never fires");
    }

    [Fact]
    public async Task A_reactor_that_never_used_Timers_refuses_to_create_them_after_dispose()
    {
        var io = new IoTestContext();
        io.Reactor.Dispose();
        FluentActions.Invoking(() => io.Reactor.Timers).Should().Throw<ObjectDisposedException>();
        await io.DisposeAsync();
    }

    [Fact]
    public async Task Disposing_the_wheel_itself_leaves_the_reactor_serving_sockets()
    {
        await using var io = new IoTestContext();
        using ReactorSocket listener = io.Listen();
        TimerWheel wheel = io.Reactor.Timers;
        ValueTask pending = wheel.DelayAsync(TimeSpan.FromMinutes(1));
        wheel.Dispose();
        await FluentActions.Awaiting(() => pending.AsTask().WaitAsync(IoTestContext.Timeout)).Should().ThrowAsync<ObjectDisposedException>();
        io.Reactor.Timers.Should().BeSameAs(wheel);

        await io.RunOnPair(listener, async (client, server) =>
        {
            await client.SendAsync(new byte[] { 9 });
            var buffer = new byte[1];
            await IoTestContext.ReceiveExactlyAsync(server, buffer);
            buffer[0].Should().Be(9);
        });
    }

    [Fact]
    public async Task Reactor_dispose_racing_first_use_and_arms_never_strands_a_delay()
    {
        for (int round = 0; round < 40; round++)
        {
            var io = new IoTestContext(workers: 1);
            using var start = new Barrier(4);
            var outcomes = new Task<string>[3];
            for (int t = 0; t < outcomes.Length; t++)
            {
                int seed = (round * 10) + t;
                outcomes[t] = Task.Factory.StartNew(
                    () =>
                    {
                        start.SignalAndWait();
                        var random = new Random(seed);
                        var delays = new List<Task>();
                        try
                        {
                            TimerWheel wheel = io.Reactor.Timers;
                            for (int i = 0; i < 200; i++)
                            {
                                delays.Add(wheel.DelayAsync(TimeSpan.FromMicroseconds(random.Next(0, 3_000))).AsTask());
                            }

                            // Every delay ends, on time or with the disposal: none waits for a reactor that is gone.
                            Task.WaitAll(delays.Select(d => d.Ended()).ToArray(), IoTestContext.Timeout).Should().BeTrue();
                            delays.Should().OnlyContain(d => d.IsCompletedSuccessfully || d.Exception!.InnerException is ObjectDisposedException);
                            return "ran";
                        }
                        catch (ObjectDisposedException)
                        {
                            // The delays armed before the disposal end with it: observed, never left to the finalizer.
                            delays.ForEach(static delay => delay.Ended());
                            return "disposed";
                        }
                    },
                    CancellationToken.None,
                    TaskCreationOptions.LongRunning,
                    TaskScheduler.Default);
            }

            start.SignalAndWait();
            Thread.SpinWait(new Random(round).Next(0, 20_000));
            io.Reactor.Dispose();
            (await Task.WhenAll(outcomes).WaitAsync(IoTestContext.Timeout)).Should().OnlyContain(o => o == "ran" || o == "disposed");
            await io.DisposeAsync();
        }
    }
}

/// <summary>CPU of the reactor thread while its wheel holds timers that are not due, measured alone.</summary>
[Collection(ResourceMeasurementGroup.Name)]
public sealed class ReactorTimersResourceTests
{
    [Fact]
    public async Task Pending_timers_cost_the_reactor_no_CPU_and_no_wake_ups_while_none_is_due()
    {
        await using var io = new IoTestContext(threadNamePrefix: "reactor-timers-idle");
        TimerWheel wheel = io.Reactor.Timers;
        const int Count = 20_000;
        var random = new Random(3);
        var delays = new ValueTask[Count];
        for (int i = 0; i < Count; i++)
        {
            delays[i] = wheel.DelayAsync(TimeSpan.FromSeconds(random.Next(600, 3600)));
        }

        wheel.PendingCount.Should().Be(Count);
        Thread.Sleep(100);

        long wakeupsBefore = wheel.DriverWakeups;
        TimeSpan window = TimeSpan.FromMilliseconds(1500);
        TimeSpan reactorCpu = Cpu.MeasureThreads("IoReactor", window);
        long wakeups = wheel.DriverWakeups - wakeupsBefore;

        wakeups.Should().BeLessThan(20, "the reactor sleeps in epoll_wait until the next occupied slot; nothing is due within minutes");
        (reactorCpu / window).Should().BeLessThan(0.03, $"the reactor thread used {reactorCpu.TotalMilliseconds:F0} ms of CPU in {window.TotalMilliseconds} ms");
        GC.KeepAlive(delays);
    }
}
