using System.Buffers;
using System.Collections.Concurrent;
using System.IO.Pipelines;
using System.Net;
using System.Net.Sockets;
using System.Runtime.CompilerServices;
using Scheduler.IO;
using Scheduler.Sources;
using Scheduler.Tests.IO;
using Scheduler.Tests.Scheduling;
using Scheduler.Timers;

namespace Scheduler.Tests;

/// <summary>
/// Adversarial lifecycles across components (scheduler, reactor, wheels, connections, sockets disposed in awkward
/// orders and from awkward threads) and <see cref="ExecutionContext"/> flow across every kind of await the library
/// completes. Serial: some tests count the process's threads and descriptors.
/// </summary>
[Collection(SerialResourceGroup.Name)]
public sealed class AdversarialLifecycleTests
{
    private static readonly TimeSpan Bound = TimeSpan.FromSeconds(10);
    private static readonly AsyncLocal<string?> s_local = new();
    private static int s_prefixCounter;

    private static string NewPrefix() => $"Lf{Interlocked.Increment(ref s_prefixCounter)}x";

    private static WorkStealingTaskScheduler NewScheduler(string prefix, int workers = 2) =>
        new(new WorkStealingTaskSchedulerOptions { WorkerCount = workers, ThreadNamePrefix = prefix });

    /// <summary>Threads of this process whose (kernel, 15-character) name starts with <paramref name="prefix"/>.</summary>
    private static int ThreadsNamed(string prefix)
    {
        int count = 0;
        foreach (string task in Directory.GetDirectories("/proc/self/task"))
        {
            try
            {
                if (File.ReadAllText(Path.Combine(task, "comm")).StartsWith(prefix + " ", StringComparison.Ordinal))
                {
                    count++;
                }
            }
            catch (IOException)
            {
                // the thread exited meanwhile
            }
        }

        return count;
    }

    /// <summary>Threads whose kernel name (truncated to 15 characters) is <paramref name="comm"/>.</summary>
    private static int ThreadsWithComm(string comm) =>
        Directory.GetDirectories("/proc/self/task").Count(task =>
        {
            try
            {
                return File.ReadAllText(Path.Combine(task, "comm")).TrimEnd('\n') == comm;
            }
            catch (IOException)
            {
                return false;
            }
        });

    private static async Task AssertThreadCountBackToAsync(string comm, int baseline)
    {
        DateTime until = DateTime.UtcNow + Bound;
        while (ThreadsWithComm(comm) > baseline && DateTime.UtcNow < until)
        {
            await Task.Delay(20);
        }

        ThreadsWithComm(comm).Should().BeLessThanOrEqualTo(baseline, "no {0} thread outlives its disposal", comm);
    }

    private static async Task AssertNoThreadsLeftAsync(string prefix)
    {
        DateTime until = DateTime.UtcNow + Bound;
        while (ThreadsNamed(prefix) > 0 && DateTime.UtcNow < until)
        {
            await Task.Delay(20);
        }

        ThreadsNamed(prefix).Should().Be(0, "every thread of scheduler {0} exits once it is disposed", prefix);
    }

    /// <summary>
    /// Waits (bounded) until every socket, epoll instance and eventfd opened since <paramref name="baseline"/> is
    /// closed. Compares descriptors, not counts: a descriptor of an earlier test closed meanwhile by its finalizer
    /// used to leave the count below the baseline for good and fail this wait.
    /// </summary>
    private static async Task AssertDescriptorsBackToAsync(Dictionary<int, string> baseline)
    {
        DateTime until = DateTime.UtcNow + Bound;
        while (ReactorDescriptors.OpenedSince(baseline).Count > 0 && DateTime.UtcNow < until)
        {
            await Task.Delay(20);
        }

        ReactorDescriptors.OpenedSince(baseline).Should().BeEmpty("no socket, epoll instance or eventfd outlives its owner");
    }

    private static IPEndPoint Loopback => new(IPAddress.Loopback, 0);

    private static async Task<(ReactorSocket Client, ReactorSocket Server)> PairAsync(IoReactor reactor, ReactorSocket listener)
    {
        Task<ReactorSocket> accept = listener.AcceptAsync().AsTask();
        ReactorSocket client = await ReactorSocket.ConnectAsync(reactor, listener.LocalEndPoint!).AsTask().WaitAsync(Bound);
        return (client, await accept.WaitAsync(Bound));
    }

    private static Task<Exception?> Outcome(Task task) => task.ExceptionWithin(Bound);

    // ---------------------------------------------------------------- lifecycles

    [Fact]
    public async Task A_reactor_on_a_disposed_scheduler_serves_sockets_and_timers_off_the_scheduler_and_only_Create_refuses()
    {
        Dictionary<int, string> baseline = ReactorDescriptors.Open();
        string prefix = NewPrefix();
        var scheduler = NewScheduler(prefix, 1);
        scheduler.Dispose();
        using (var reactor = new IoReactor(scheduler))
        {
            using ReactorSocket listener = ReactorSocket.Listen(reactor, Loopback);
            (ReactorSocket client, ReactorSocket server) = await PairAsync(reactor, listener);
            using (client)
            using (server)
            {
                // A receive that has to wait (completed by the reactor, resumed on the ThreadPool).
                var one = new byte[1];
                Task<int> receive = server.ReceiveAsync(one).AsTask();
                (await client.SendAsync(new byte[] { 42 }).AsTask().WaitAsync(Bound)).Should().Be(1);
                (await receive.WaitAsync(Bound)).Should().Be(1);
                one[0].Should().Be(42);

                await IoTestContext.AssertByteCrossesAsync(server, client, 7).WaitAsync(Bound);
                await IoTestContext.AssertByteCrossesAsync(client, server, 8).WaitAsync(Bound);

                await reactor.Timers.DelayAsync(TimeSpan.FromMilliseconds(5)).AsTask().WaitAsync(Bound);
                await Task.Delay(TimeSpan.FromMilliseconds(5), reactor.Timers).WaitAsync(Bound);
            }
        }

        await AssertNoThreadsLeftAsync(prefix);
        await AssertDescriptorsBackToAsync(baseline);
    }

    /// <summary>
    /// io.md: "on a reactor whose scheduler is disposed, <c>Create</c> throws <c>TaskSchedulerException</c> (inner
    /// <c>ObjectDisposedException</c>), starts nothing and leaves the socket to the caller", and Create's XML docs say the
    /// same. The scheduler now accepts a StartNew whose only option is DenyChildAttach after Dispose (as an await
    /// resumption), which is exactly the shape of Create's starting work item, so the refusal never comes.
    /// </summary>
    [Fact]
    public async Task ReactorConnection_Create_on_a_reactor_whose_scheduler_is_disposed_throws_TaskSchedulerException_and_starts_nothing()
    {
        string prefix = NewPrefix();
        var scheduler = NewScheduler(prefix, 1);
        scheduler.Dispose();
        using var reactor = new IoReactor(scheduler);
        using ReactorSocket listener = ReactorSocket.Listen(reactor, Loopback);
        (ReactorSocket client, ReactorSocket server) = await PairAsync(reactor, listener);
        using (client)
        using (server)
        {
            ReactorConnection? created = null;
            Action create = () => created = ReactorConnection.Create(server);
            try
            {
                create.Should().Throw<TaskSchedulerException>("io.md and Create's XML docs promise the refusal on a disposed scheduler")
                    .WithInnerException<ObjectDisposedException>();
            }
            finally
            {
                if (created is not null)
                {
                    await created.DisposeAsync().AsTask().WaitAsync(Bound);
                }
            }

            // "starts nothing and leaves the socket to the caller": no loop took the socket's receive.
            await IoTestContext.AssertByteCrossesAsync(client, server, 8).WaitAsync(Bound);
        }
    }

    [Fact]
    public async Task A_scheduler_disposed_from_its_own_pipe_read_continuation_leaves_the_connection_echoing_on_the_ThreadPool()
    {
        string prefix = NewPrefix();
        var scheduler = NewScheduler(prefix, 1);
        using var reactor = new IoReactor(scheduler);
        using ReactorSocket listener = ReactorSocket.Listen(reactor, Loopback);
        (ReactorSocket client, ReactorSocket server) = await PairAsync(reactor, listener);
        using (client)
        {
            ReactorConnection connection = ReactorConnection.Create(server);
            Task<int> echo = scheduler.Factory.StartNew(async () =>
            {
                int rounds = 0;
                while (true)
                {
                    ReadResult result = await connection.Input.ReadAsync();
                    if (rounds++ == 0)
                    {
                        scheduler.Dispose(); // on its own worker: does not wait
                    }

                    foreach (ReadOnlyMemory<byte> segment in result.Buffer)
                    {
                        connection.Output.Write(segment.Span);
                    }

                    connection.Input.AdvanceTo(result.Buffer.End);
                    await connection.Output.FlushAsync();
                    if (result.IsCompleted)
                    {
                        return rounds;
                    }
                }
            }).Unwrap();

            for (int i = 0; i < 20; i++)
            {
                byte[] message = IoTestContext.Pattern(1000, i);
                (await client.SendAsync(message).AsTask().WaitAsync(Bound)).Should().Be(message.Length);
                var back = new byte[message.Length];
                await IoTestContext.ReceiveExactlyAsync(client, back).WaitAsync(Bound);
                back.Should().Equal(message, "round {0} is echoed after the scheduler's disposal", i);
            }

            await AssertNoThreadsLeftAsync(prefix);
            client.Shutdown(SocketShutdown.Send);
            (await echo.WaitAsync(Bound)).Should().BeGreaterThan(1);
            await connection.DisposeAsync().AsTask().WithTimeout("the connection's DisposeAsync", Bound);
        }
    }

    [Theory]
    [InlineData(true, false)]
    [InlineData(false, true)]
    [InlineData(true, true)]
    public async Task A_connection_DisposeAsync_lingering_on_a_peer_that_does_not_read_returns_cleanly_when_the_reactor_or_scheduler_goes_away(bool disposeReactor, bool disposeScheduler)
    {
        Dictionary<int, string> baseline = ReactorDescriptors.Open();
        string prefix = NewPrefix();
        var io = new IoTestContext(2, prefix);
        try
        {
            (ReactorConnection connection, ReactorSocket client) = await io.ConnectionPairAsync();
            using (client)
            {
                // The peer sent a request we never read, and reads nothing of our long answer: DisposeAsync lingers.
                (await client.SendAsync(new byte[4096]).AsTask().WaitAsync(Bound)).Should().Be(4096);
                Task<FlushResult> paused = await io.WriteUntilPaused(connection);
                Task dispose = Task.Run(async () => await connection.DisposeAsync());
                await Task.Delay(50);
                var disposers = new List<Task>();
                if (disposeReactor)
                {
                    disposers.Add(Task.Run(io.Reactor.Dispose));
                }

                if (disposeScheduler)
                {
                    disposers.Add(io.Scheduler.DisposeAsync().AsTask());
                }

                await Task.WhenAll(disposers).WithTimeout("the reactor's or scheduler's disposal during the linger", Bound);
                Exception? outcome = await Outcome(dispose);
                outcome.Should().BeNull("a connection's DisposeAsync completes without throwing whatever else was disposed meanwhile");
                Exception? flushOutcome = await Outcome(paused);
                (flushOutcome is null or ObjectDisposedException or OperationCanceledException or SocketException or InvalidOperationException)
                    .Should().BeTrue($"the paused flush is released (it ended with {flushOutcome})");
            }
        }
        finally
        {
            await io.DisposeAsync();
        }

        await AssertNoThreadsLeftAsync(prefix);
        await AssertDescriptorsBackToAsync(baseline);
    }

    [Fact]
    public async Task DisposeAsync_while_the_application_holds_an_unadvanced_read_and_Input_is_paused_still_returns()
    {
        await using var io = new IoTestContext(2, NewPrefix());
        (ReactorConnection connection, ReactorSocket client) = await io.ConnectionPairAsync();
        using (client)
        {
            // The peer floods well past the pause threshold and keeps its socket open.
            Task flood = io.Run(async () =>
            {
                var chunk = new byte[64 << 10];
                try
                {
                    for (int i = 0; i < 64; i++)
                    {
                        await client.SendAsync(chunk);
                    }
                }
                catch (Exception e) when (e is ObjectDisposedException or SocketException)
                {
                }
            });
            Task dispose = io.Run(async () =>
            {
                ReadResult result;
                do
                {
                    result = await connection.Input.ReadAsync();
                    connection.Input.AdvanceTo(result.Buffer.Start, result.Buffer.End); // examined, kept
                }
                while (result.Buffer.Length < 64 << 10);

                // Bail out holding everything; the receive loop is parked in its flush on the paused pipe.
                await connection.DisposeAsync();
            });
            await dispose.WithTimeout("DisposeAsync with Input paused under the application's unadvanced read", Bound);
            client.Dispose();
            await flood.WaitAsync(Bound);
        }
    }

    [Fact]
    public async Task A_reactor_on_the_Shared_scheduler_runs_connections_there_and_its_disposal_leaves_Shared_working()
    {
        WorkStealingTaskScheduler shared = WorkStealingTaskScheduler.Shared;
        using (var reactor = new IoReactor(shared))
        {
            reactor.Scheduler.Should().BeSameAs(shared);
            using ReactorSocket listener = ReactorSocket.Listen(reactor, Loopback);
            (ReactorSocket client, ReactorSocket server) = await PairAsync(reactor, listener);
            using (client)
            {
                ReactorConnection connection = ReactorConnection.Create(server);
                var onWorker = new ConcurrentBag<bool>();
                Task echo = shared.Factory.StartNew(async () =>
                {
                    while (true)
                    {
                        ReadResult result = await connection.Input.ReadAsync();
                        onWorker.Add(shared.IsWorkerThread);
                        foreach (ReadOnlyMemory<byte> segment in result.Buffer)
                        {
                            connection.Output.Write(segment.Span);
                        }

                        connection.Input.AdvanceTo(result.Buffer.End);
                        await connection.Output.FlushAsync();
                        onWorker.Add(shared.IsWorkerThread);
                        if (result.IsCompleted)
                        {
                            return;
                        }
                    }
                }).Unwrap();

                byte[] payload = IoTestContext.Pattern(100_000, 3);
                Task send = client.SendAsync(payload).AsTask();
                var back = new byte[payload.Length];
                await IoTestContext.ReceiveExactlyAsync(client, back).WaitAsync(Bound);
                await send.WaitAsync(Bound);
                back.Should().Equal(payload);
                client.Shutdown(SocketShutdown.Send);
                await echo.WaitAsync(Bound);
                onWorker.Should().OnlyContain(b => b, "pipe awaits come back to the Shared workers");
                await connection.DisposeAsync().AsTask().WaitAsync(Bound);
            }
        }

        (await shared.Factory.StartNew(() => shared.IsWorkerThread).WaitAsync(Bound)).Should().BeTrue("Shared is never disposed");
        Action dispose = () => shared.Dispose();
        dispose.Should().Throw<InvalidOperationException>();
    }

    [Fact]
    public async Task Disposing_the_scheduler_under_a_live_reactor_connection_and_wheels_still_resumes_every_await_with_its_context()
    {
        Dictionary<int, string> baseline = ReactorDescriptors.Open();
        string prefix = NewPrefix();
        var scheduler = NewScheduler(prefix);
        var reactor = new IoReactor(scheduler);
        var wheel = new TimerWheel();
        try
        {
            using ReactorSocket listener = ReactorSocket.Listen(reactor, Loopback);
            (ReactorSocket client, ReactorSocket server) = await PairAsync(reactor, listener);
            using (client)
            {
                ReactorConnection connection = ReactorConnection.Create(server);
                var started = new CountdownEvent(4);

                Task<string?> reader = scheduler.Factory.StartNew(async Task<string?> () =>
                {
                    s_local.Value = "read";
                    ValueTask<ReadResult> pending = connection.Input.ReadAsync();
                    started.Signal();
                    ReadResult result = await pending;
                    string? seen = s_local.Value;
                    byte[] data = result.Buffer.ToArray();
                    connection.Input.AdvanceTo(result.Buffer.End);
                    await connection.Output.WriteAsync(data);
                    return seen == "read" && s_local.Value == "read" ? seen : $"lost: {seen}/{s_local.Value}";
                }).Unwrap();
                Task<string?> reactorDelay = scheduler.Factory.StartNew(async Task<string?> () =>
                {
                    s_local.Value = "reactor-delay";
                    ValueTask pending = reactor.Timers.DelayAsync(TimeSpan.FromMilliseconds(300));
                    started.Signal();
                    await pending;
                    return s_local.Value;
                }).Unwrap();
                Task<string?> wheelDelay = scheduler.Factory.StartNew(async Task<string?> () =>
                {
                    s_local.Value = "wheel-delay";
                    ValueTask pending = wheel.DelayAsync(TimeSpan.FromMilliseconds(300));
                    started.Signal();
                    await pending;
                    return s_local.Value;
                }).Unwrap();
                Task<string?> taskDelay = scheduler.Factory.StartNew(async Task<string?> () =>
                {
                    s_local.Value = "task-delay";
                    Task pending = Task.Delay(TimeSpan.FromMilliseconds(300), reactor.Timers);
                    started.Signal();
                    await pending;
                    return s_local.Value;
                }).Unwrap();

                started.Wait(Bound).Should().BeTrue();
                await scheduler.DisposeAsync().AsTask().WithTimeout("the scheduler's DisposeAsync", Bound);
                await AssertNoThreadsLeftAsync(prefix);

                // Everything below now happens with no worker left.
                (await client.SendAsync(new byte[] { 1, 2, 3 }).AsTask().WaitAsync(Bound)).Should().Be(3);
                (await reader.WaitAsync(Bound)).Should().Be("read");
                var echoed = new byte[3];
                await IoTestContext.ReceiveExactlyAsync(client, echoed).WaitAsync(Bound);
                echoed.Should().Equal(1, 2, 3);
                (await reactorDelay.WaitAsync(Bound)).Should().Be("reactor-delay");
                (await wheelDelay.WaitAsync(Bound)).Should().Be("wheel-delay");
                (await taskDelay.WaitAsync(Bound)).Should().Be("task-delay");

                client.Shutdown(SocketShutdown.Send);
                await connection.DisposeAsync().AsTask().WithTimeout("the connection's DisposeAsync after its scheduler's", Bound);
                (await client.ReceiveAsync(new byte[1]).AsTask().WaitAsync(Bound)).Should().Be(0);
            }
        }
        finally
        {
            reactor.Dispose();
            wheel.Dispose();
        }

        await AssertDescriptorsBackToAsync(baseline);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task A_wheel_delay_awaited_on_a_worker_completes_its_method_when_the_scheduler_is_disposed_during_the_delay(bool disposeFromWorker)
    {
        string prefix = NewPrefix();
        var scheduler = NewScheduler(prefix, 1);
        using var wheel = new TimerWheel();
        var awaiting = new ManualResetEventSlim();
        Task<(string?, string?)> method = scheduler.Factory.StartNew(async Task<(string?, string?)> () =>
        {
            s_local.Value = "before";
            ValueTask delay = wheel.DelayAsync(TimeSpan.FromMilliseconds(200));
            awaiting.Set();
            await delay;
            string? afterDelay = s_local.Value;
            await Task.Delay(TimeSpan.FromMilliseconds(20), wheel);
            return (afterDelay, s_local.Value);
        }).Unwrap();
        awaiting.Wait(Bound).Should().BeTrue();
        if (disposeFromWorker)
        {
            await scheduler.Factory.StartNew(scheduler.Dispose).WaitAsync(Bound);
        }
        else
        {
            await scheduler.DisposeAsync().AsTask().WaitAsync(Bound);
        }

        (await method.WaitAsync(Bound)).Should().Be(("before", "before"));
        await AssertNoThreadsLeftAsync(prefix);
    }

    public enum DisposeSite
    {
        PipeReadContinuation,
        PipeSchedulerCallback,
        WakerContinuation,
        OwnWheelDelayContinuation,
        OwnWheelTimerCallback,
    }

    [Theory]
    [InlineData(DisposeSite.PipeReadContinuation)]
    [InlineData(DisposeSite.PipeSchedulerCallback)]
    [InlineData(DisposeSite.WakerContinuation)]
    [InlineData(DisposeSite.OwnWheelDelayContinuation)]
    [InlineData(DisposeSite.OwnWheelTimerCallback)]
    public async Task Disposing_the_reactor_from_a_callback_fails_what_is_pending_with_ObjectDisposed_and_hangs_nothing(DisposeSite site)
    {
        Dictionary<int, string> baseline = ReactorDescriptors.Open();
        string prefix = NewPrefix();
        await using (var io = new IoTestContext(2, prefix))
        {
            ReactorSocket listener = io.Listen();
            (ReactorConnection connection, ReactorSocket client) = await io.ConnectionPairAsync();
            (ReactorSocket c2, ReactorSocket s2) = await io.ConnectPairOnSchedulerAsync(listener);
            Task<int> receive = io.Run(async () => await s2.ReceiveAsync(new byte[8]));
            Task<ReactorSocket> accept = io.Run(async () => await listener.AcceptAsync());
            Task delay = io.Run(async () => await io.Reactor.Timers.DelayAsync(TimeSpan.FromMinutes(5)));
            var disposed = new TaskCompletionSource<bool>(TaskCreationOptions.RunContinuationsAsynchronously);

            void DisposeReactor()
            {
                try
                {
                    io.Reactor.Dispose();
                    disposed.TrySetResult(io.Scheduler.IsWorkerThread);
                }
                catch (Exception e)
                {
                    disposed.TrySetException(e);
                }
            }

            PooledValueTaskSource? source = null;
            ITimer? timer = null;
            switch (site)
            {
                case DisposeSite.PipeReadContinuation:
                    _ = io.Run(async () =>
                    {
                        await connection.Input.ReadAsync();
                        DisposeReactor();
                    });
                    (await client.SendAsync(new byte[] { 9 }).AsTask().WaitAsync(Bound)).Should().Be(1);
                    break;
                case DisposeSite.PipeSchedulerCallback:
                    io.Scheduler.PipeScheduler.Schedule(_ => DisposeReactor(), null);
                    break;
                case DisposeSite.WakerContinuation:
                    source = PooledValueTaskSource.Rent();
                    ValueTask waker = source.Task;
                    var awaiting = new ManualResetEventSlim();
                    _ = io.Run(async () =>
                    {
                        ValueTask w = waker;
                        awaiting.Set();
                        await w;
                        DisposeReactor();
                    });
                    awaiting.Wait(Bound).Should().BeTrue();
                    await Task.Run(() => source.TrySetResult()).WaitAsync(Bound);
                    break;
                case DisposeSite.OwnWheelDelayContinuation:
                    _ = io.Run(async () =>
                    {
                        await io.Reactor.Timers.DelayAsync(TimeSpan.FromMilliseconds(20));
                        DisposeReactor();
                    });
                    break;
                case DisposeSite.OwnWheelTimerCallback:
                    timer = io.Reactor.Timers.CreateTimer(_ => DisposeReactor(), null, TimeSpan.FromMilliseconds(20), Timeout.InfiniteTimeSpan);
                    break;
            }

            (await disposed.Task.WithTimeout($"reactor Dispose from {site}", Bound)).Should().Be(site != DisposeSite.OwnWheelTimerCallback);
            (await Outcome(receive)).Should().BeOfType<ObjectDisposedException>();
            (await Outcome(accept)).Should().BeOfType<ObjectDisposedException>();
            (await Outcome(delay)).Should().BeOfType<ObjectDisposedException>();
            Action timers = () => _ = io.Reactor.Timers;
            timers.Should().Throw<ObjectDisposedException>();
            await connection.DisposeAsync().AsTask().WithTimeout("the connection's DisposeAsync on a disposed reactor", Bound);
            timer?.Dispose();
            c2.Dispose();
            s2.Dispose();
            client.Dispose();
            listener.Dispose();

            // The scheduler outlives its reactor.
            (await io.Scheduler.Factory.StartNew(() => 5).WaitAsync(Bound)).Should().Be(5);
        }

        await AssertNoThreadsLeftAsync(prefix);
        await AssertDescriptorsBackToAsync(baseline);
    }

    [Fact]
    public async Task Disposing_everything_concurrently_in_random_orders_from_workers_and_outside_hangs_nothing_and_leaks_nothing()
    {
        Dictionary<int, string> baseline = ReactorDescriptors.Open();
        int reactorThreads = ThreadsWithComm("IoReactor");
        int wheelThreads = ThreadsWithComm("TimerWheel driv");
        var unobserved = new ConcurrentQueue<Exception>();
        EventHandler<UnobservedTaskExceptionEventArgs> onUnobserved = (_, e) =>
        {
            // Process-wide: other tests' deliberate failures arrive here too (AdversarialCrashTests met one).
            if (!TestExceptions.InvolveATest(e.Exception))
            {
                unobserved.Enqueue(e.Exception);
            }
        };
        TaskScheduler.UnobservedTaskException += onUnobserved;
        try
        {
            var random = new Random(1234);
            for (int round = 0; round < 12; round++)
            {
                string prefix = NewPrefix();
                var scheduler = NewScheduler(prefix);
                var reactor = new IoReactor(scheduler);
                var wheel = new TimerWheel();
                TimerWheel reactorWheel = reactor.Timers;
                ReactorSocket listener = ReactorSocket.Listen(reactor, Loopback);
                (ReactorSocket client, ReactorSocket server) = await PairAsync(reactor, listener);
                ReactorConnection connection = ReactorConnection.Create(server);

                Task Pending(Func<Task> body) => scheduler.Factory.StartNew(body).Unwrap();
                var pending = new (string Name, Task Task)[]
                {
                    ("pipe read", Pending(async () => await connection.Input.ReadAsync())),
                    ("client receive", Pending(async () => await client.ReceiveAsync(new byte[8]))),
                    ("accept", Pending(async () => (await listener.AcceptAsync()).Dispose())),
                    ("reactor delay", Pending(async () => await reactorWheel.DelayAsync(TimeSpan.FromMinutes(1)))),
                    ("wheel delay", Pending(async () => await wheel.DelayAsync(TimeSpan.FromMinutes(1)))),
                    ("flush", Pending(async () => await connection.Output.WriteAsync(new byte[100]))),
                };

                var disposers = new List<(string Name, Func<Task> Dispose)>
                {
                    ("scheduler", () => { scheduler.Dispose(); return Task.CompletedTask; }),
                    ("reactor", () => { reactor.Dispose(); return Task.CompletedTask; }),
                    ("reactor wheel", () => { reactorWheel.Dispose(); return Task.CompletedTask; }),
                    ("wheel", () => { wheel.Dispose(); return Task.CompletedTask; }),
                    ("connection", () => connection.DisposeAsync().AsTask()),
                    ("client", () => { client.Dispose(); return Task.CompletedTask; }),
                    ("listener", () => { listener.Dispose(); return Task.CompletedTask; }),
                    ("connection again", () => connection.DisposeAsync().AsTask()),
                    ("reactor again", () => { reactor.Dispose(); return Task.CompletedTask; }),
                    ("server socket", () => { server.Dispose(); return Task.CompletedTask; }),
                };
                using var go = new ManualResetEventSlim();
                var running = new List<(string, Task)>();
                foreach ((string name, Func<Task> dispose) in disposers.OrderBy(_ => random.Next()))
                {
                    bool onWorker = random.Next(2) == 0;
                    Func<Task> body = () =>
                    {
                        go.Wait();
                        return dispose();
                    };
                    Task started;
                    if (onWorker && name != "scheduler")
                    {
                        try
                        {
                            started = scheduler.Factory.StartNew(body, CancellationToken.None, TaskCreationOptions.None, scheduler).Unwrap();
                        }
                        catch (TaskSchedulerException)
                        {
                            started = Task.Run(body);
                        }
                    }
                    else
                    {
                        started = Task.Run(body);
                    }

                    running.Add(($"{name} ({(onWorker ? "worker" : "outside")})", started));
                }

                go.Set();
                foreach ((string name, Task task) in running)
                {
                    await task.WithTimeout($"round {round}: disposing the {name}", Bound);
                }

                foreach ((string name, Task task) in pending)
                {
                    Exception? outcome = await Outcome(task);
                    if (outcome is not null and not ObjectDisposedException and not OperationCanceledException)
                    {
                        // A peer that closed may reset: only the socket-level operations may see that.
                        (outcome is SocketException && name is "client receive" or "pipe read" or "flush")
                            .Should().BeTrue($"round {round}: the {name} ended with {outcome}");
                    }
                }

                scheduler.Dispose();
                await AssertNoThreadsLeftAsync(prefix);
            }

            await AssertDescriptorsBackToAsync(baseline);
            await AssertThreadCountBackToAsync("IoReactor", reactorThreads);
            await AssertThreadCountBackToAsync("TimerWheel driv", wheelThreads);
            GC.Collect();
            GC.WaitForPendingFinalizers();
            GC.Collect();
            unobserved.Should().BeEmpty();
        }
        finally
        {
            TaskScheduler.UnobservedTaskException -= onUnobserved;
        }
    }

    // ---------------------------------------------------------------- ExecutionContext

    public enum AwaitKind
    {
        SchedulerTask,
        PooledSourceFromForeignThread,
        WheelDelay,
        ReactorWheelDelay,
        TaskDelayOnWheel,
        SocketReceive,
        PipeRead,
        PipeFlush,
        Yield,
        SocketSendUnderBackpressure,
        Accept,
        Connect,
    }

    [Theory]
    [InlineData(AwaitKind.SchedulerTask)]
    [InlineData(AwaitKind.PooledSourceFromForeignThread)]
    [InlineData(AwaitKind.WheelDelay)]
    [InlineData(AwaitKind.ReactorWheelDelay)]
    [InlineData(AwaitKind.TaskDelayOnWheel)]
    [InlineData(AwaitKind.SocketReceive)]
    [InlineData(AwaitKind.PipeRead)]
    [InlineData(AwaitKind.PipeFlush)]
    [InlineData(AwaitKind.Yield)]
    [InlineData(AwaitKind.SocketSendUnderBackpressure)]
    [InlineData(AwaitKind.Accept)]
    [InlineData(AwaitKind.Connect)]
    public Task An_AsyncLocal_set_before_each_kind_of_await_is_seen_after_it_on_a_worker_and_never_by_the_next_item(AwaitKind kind) =>
        AsyncLocalAcross(kind, onScheduler: true);

    [Theory]
    [InlineData(AwaitKind.PooledSourceFromForeignThread)]
    [InlineData(AwaitKind.WheelDelay)]
    [InlineData(AwaitKind.ReactorWheelDelay)]
    [InlineData(AwaitKind.TaskDelayOnWheel)]
    [InlineData(AwaitKind.SocketReceive)]
    [InlineData(AwaitKind.PipeRead)]
    [InlineData(AwaitKind.PipeFlush)]
    [InlineData(AwaitKind.SocketSendUnderBackpressure)]
    [InlineData(AwaitKind.Accept)]
    [InlineData(AwaitKind.Connect)]
    public Task An_AsyncLocal_set_before_each_kind_of_await_off_the_scheduler_is_seen_after_it(AwaitKind kind) =>
        AsyncLocalAcross(kind, onScheduler: false);

    private static async Task AsyncLocalAcross(AwaitKind kind, bool onScheduler)
    {
        var changes = new ConcurrentQueue<(int Thread, string? Value, bool Switch)>();
        var local = new AsyncLocal<string?>(a => changes.Enqueue((Environment.CurrentManagedThreadId, a.CurrentValue, a.ThreadContextChanged)));
        string prefix = NewPrefix();
        var workerIds = new ConcurrentDictionary<int, bool>();
        await using (var io = new IoTestContext(1, prefix))
        {
            using var wheel = new TimerWheel();
            (ReactorConnection connection, ReactorSocket client) = await io.ConnectionPairAsync();
            using ReactorSocket listener = io.Listen();
            Func<Func<Task<(string?, bool)>>, Task<(string?, bool)>> run = onScheduler ? body => io.Run(body) : body => Task.Run(body);
            Task<(string?, bool)> method = run(async Task<(string?, bool)> () =>
            {
                workerIds[Environment.CurrentManagedThreadId] = true;
                local.Value = "mine";
                switch (kind)
                {
                    case AwaitKind.SchedulerTask:
                        await io.Scheduler.Factory.StartNew(() => Thread.SpinWait(1000));
                        break;
                    case AwaitKind.PooledSourceFromForeignThread:
                        PooledValueTaskSource source = PooledValueTaskSource.Rent();
                        ValueTask task = source.Task;
                        var thread = new Thread(() =>
                        {
                            Thread.Sleep(30); // only to make the await suspend first; correctness does not depend on it
                            source.TrySetResult();
                        }) { IsBackground = true };
                        using (ExecutionContext.SuppressFlow())
                        {
                            thread.Start();
                        }

                        await task;
                        break;
                    case AwaitKind.WheelDelay:
                        await wheel.DelayAsync(TimeSpan.FromMilliseconds(20));
                        break;
                    case AwaitKind.ReactorWheelDelay:
                        await io.Reactor.Timers.DelayAsync(TimeSpan.FromMilliseconds(20));
                        break;
                    case AwaitKind.TaskDelayOnWheel:
                        await Task.Delay(TimeSpan.FromMilliseconds(20), wheel);
                        break;
                    case AwaitKind.SocketReceive:
                        ValueTask<int> receive = client.ReceiveAsync(new byte[4]);
                        _ = Task.Run(async () => await connection.Output.WriteAsync(new byte[] { 1 }));
                        (await receive).Should().Be(1);
                        break;
                    case AwaitKind.PipeRead:
                        ValueTask<ReadResult> read = connection.Input.ReadAsync();
                        _ = Task.Run(async () => await client.SendAsync(new byte[] { 1 }));
                        ReadResult result = await read;
                        connection.Input.AdvanceTo(result.Buffer.End);
                        break;
                    case AwaitKind.PipeFlush:
                        var chunk = new byte[64 << 10];
                        ValueTask<FlushResult> flush;
                        int writes = 0;
                        while ((flush = connection.Output.WriteAsync(chunk)).IsCompleted)
                        {
                            await flush;
                            if (++writes > 4096)
                            {
                                throw new InvalidOperationException("the writer was never paused");
                            }
                        }

                        _ = Task.Run(async () =>
                        {
                            var sink = new byte[64 << 10];
                            try
                            {
                                while (await client.ReceiveAsync(sink) > 0)
                                {
                                }
                            }
                            catch (ObjectDisposedException)
                            {
                                // The test disposes the client under the sink: its end, not a fault to leave unobserved.
                            }
                        });
                        await flush;
                        break;
                    case AwaitKind.Yield:
                        await Task.Yield();
                        break;
                    case AwaitKind.SocketSendUnderBackpressure:
                        connection.Input.Complete(); // our side stops reading: the client's sends fill the socket
                        var big = new byte[1 << 20];
                        ValueTask<int> send;
                        int sends = 0;
                        while ((send = client.SendAsync(big)).IsCompleted)
                        {
                            await send;
                            if (++sends > 512)
                            {
                                throw new InvalidOperationException("the send never had to wait");
                            }
                        }

                        // Nobody reads: close the receiving side, which fails the send with a reset (or it completes).
                        _ = Task.Run(async () =>
                        {
                            await Task.Delay(50);
                            await connection.DisposeAsync();
                        });
                        try
                        {
                            await send;
                        }
                        catch (SocketException)
                        {
                        }

                        break;
                    case AwaitKind.Accept:
                        ValueTask<ReactorSocket> accept = listener.AcceptAsync();
                        _ = Task.Run(async () => (await ReactorSocket.ConnectAsync(io.Reactor, listener.LocalEndPoint!)).Dispose());
                        (await accept).Dispose();
                        break;
                    case AwaitKind.Connect:
                        (await ReactorSocket.ConnectAsync(io.Reactor, listener.LocalEndPoint!)).Dispose();
                        break;
                }

                return (local.Value, io.Scheduler.IsWorkerThread);
            });
            (string? Value, bool OnWorker) after = await method.WaitAsync(Bound);
            after.Value.Should().Be("mine", "the value set before the {0} await flows across it", kind);
            if (onScheduler)
            {
                after.OnWorker.Should().BeTrue("the method resumes on the worker after the {0} await", kind);
            }

            // (Off the scheduler, pipe awaits resume on the reactor scheduler's workers by design: the pipes use its
            // PipeScheduler, io.md "Schedulers".)

            // The next unrelated items on that one worker, queued from a clean context, must see nothing.
            var probes = new List<Task<string?>>();
            using (ExecutionContext.SuppressFlow())
            {
                var viaPipe = new TaskCompletionSource<string?>(TaskCreationOptions.RunContinuationsAsynchronously);
                io.Scheduler.PipeScheduler.Schedule(_ => viaPipe.SetResult(local.Value), null);
                probes.Add(viaPipe.Task);
                probes.Add(io.Scheduler.Factory.StartNew(() => local.Value));
                probes.Add(io.Scheduler.Factory.StartNew(async () =>
                {
                    await wheel.DelayAsync(TimeSpan.FromMilliseconds(1));
                    return local.Value;
                }).Unwrap());
            }

            foreach (Task<string?> probe in probes)
            {
                (await probe.WaitAsync(Bound)).Should().BeNull("the value of the {0} await's method must not leak into later items", kind);
            }

            client.Dispose();
            await connection.DisposeAsync().AsTask().WaitAsync(Bound);
        }

        if (!onScheduler)
        {
            return;
        }

        // Joined: each worker's last context change must have left the value unset.
        foreach (int worker in workerIds.Keys)
        {
            (int Thread, string? Value, bool Switch)[] mine = changes.Where(c => c.Thread == worker).ToArray();
            mine.Should().NotBeEmpty();
            mine[^1].Value.Should().BeNull("the worker does not carry the value after its last item ({0})", kind);
        }
    }

    [Fact]
    public async Task Threads_started_by_a_scheduler_reactor_or_wheel_do_not_carry_the_creators_AsyncLocal_into_unrelated_work()
    {
        string prefix = NewPrefix();
        WorkStealingTaskScheduler scheduler;
        IoReactor reactor;
        TimerWheel wheel;
        s_local.Value = "creator";
        try
        {
            scheduler = NewScheduler(prefix, 1);
            reactor = new IoReactor(scheduler);
            wheel = new TimerWheel();
            _ = reactor.Timers;
        }
        finally
        {
            s_local.Value = null;
        }

        await using var disposeScheduler = SchedulerTestHelpers.DisposeWithin(scheduler);
        using (reactor)
        using (wheel)
        {
            var probes = new List<(string Name, Task<string?> Seen)>();
            using (ExecutionContext.SuppressFlow())
            {
                var pipe = new TaskCompletionSource<string?>(TaskCreationOptions.RunContinuationsAsynchronously);
                scheduler.PipeScheduler.Schedule(_ => pipe.SetResult(s_local.Value), null);
                probes.Add(("pipe callback", pipe.Task));
                probes.Add(("task", scheduler.Factory.StartNew<string?>(() => s_local.Value)));
                probes.Add(("LongRunning", scheduler.Factory.StartNew<string?>(() => s_local.Value, TaskCreationOptions.LongRunning)));
                foreach ((string name, TimeProvider provider) in new (string, TimeProvider)[] { ("wheel timer", wheel), ("reactor timer", reactor.Timers) })
                {
                    var fired = new TaskCompletionSource<string?>(TaskCreationOptions.RunContinuationsAsynchronously);
                    ITimer timer = provider.CreateTimer(_ => fired.TrySetResult(s_local.Value), null, TimeSpan.FromMilliseconds(5), Timeout.InfiniteTimeSpan);
                    probes.Add((name, fired.Task.ContinueWith(t => { timer.Dispose(); return t.Result; }, TaskScheduler.Default)));
                }

                foreach ((string name, Func<ValueTask> start) in new (string, Func<ValueTask>)[]
                {
                    ("wheel delay", () => wheel.DelayAsync(TimeSpan.FromMilliseconds(5))),
                    ("reactor delay", () => reactor.Timers.DelayAsync(TimeSpan.FromMilliseconds(5))),
                })
                {
                    var resumed = new TaskCompletionSource<string?>(TaskCreationOptions.RunContinuationsAsynchronously);
#pragma warning disable CA2012 // GetResult runs in the completion callback, once the delay has completed
                    ValueTask delay = start();
                    ValueTaskAwaiter awaiter = delay.GetAwaiter();
#pragma warning restore CA2012
                    awaiter.UnsafeOnCompleted(() =>
                    {
                        awaiter.GetResult();
                        resumed.SetResult(s_local.Value);
                    });
                    probes.Add((name + " (awaited off the scheduler)", resumed.Task));
                    Task<Task<string?>> onWorker = scheduler.Factory.StartNew(() =>
                    {
                        var inner = new TaskCompletionSource<string?>(TaskCreationOptions.RunContinuationsAsynchronously);
                        ValueTask d = start();
                        ValueTaskAwaiter a = d.GetAwaiter();
                        a.UnsafeOnCompleted(() =>
                        {
                            a.GetResult();
                            inner.SetResult(s_local.Value);
                        });
                        return inner.Task;
                    });
                    probes.Add((name + " (awaited on a worker)", onWorker.Unwrap()));
                }
            }

            foreach ((string name, Task<string?> seen) in probes)
            {
                (await seen.WaitAsync(Bound)).Should().BeNull("the {0} runs in a context of its own, not the one the components were created in", name);
            }
        }
    }

    [Fact]
    public async Task StartNew_under_SuppressFlow_sees_no_AsyncLocal_and_the_callers_value_is_intact_afterwards()
    {
        string prefix = NewPrefix();
        var scheduler = NewScheduler(prefix, 1);
        await using var disposeScheduler = SchedulerTestHelpers.DisposeWithin(scheduler);
        s_local.Value = "caller";
        Task<string?> suppressed;
        Task<string?> suppressedAsync;
        using (ExecutionContext.SuppressFlow())
        {
            suppressed = scheduler.Factory.StartNew<string?>(() => s_local.Value);
            suppressedAsync = scheduler.Factory.StartNew(async Task<string?> () =>
            {
                await Task.Delay(TimeSpan.FromMilliseconds(5));
                s_local.Value = "inside";
                await Task.Yield();
                return s_local.Value;
            }).Unwrap();
        }

        Task<string?> flowed = scheduler.Factory.StartNew<string?>(() => s_local.Value);
        (await suppressed.WaitAsync(Bound)).Should().BeNull();
        (await suppressedAsync.WaitAsync(Bound)).Should().Be("inside");
        (await flowed.WaitAsync(Bound)).Should().Be("caller");
        s_local.Value.Should().Be("caller");
        (await scheduler.Factory.StartNew(() => s_local.Value, CancellationToken.None, TaskCreationOptions.None, scheduler)
            .ContinueWith(_ => s_local.Value, scheduler).WaitAsync(Bound)).Should().Be("caller");
        s_local.Value = null;
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task OnCompleted_callbacks_of_library_awaitables_see_the_flowed_AsyncLocal_and_what_they_set_does_not_leak_to_the_next_item(bool unsafeOnCompleted)
    {
        string prefix = NewPrefix();
        await using var io = new IoTestContext(1, prefix);
        using var wheel = new TimerWheel();
        (ReactorConnection connection, ReactorSocket client) = await io.ConnectionPairAsync();
        using (client)
        {
            await using var disposeConnection = IoTestContext.DisposeWithin(connection);
            var kinds = new List<Func<ValueTask>>
            {
                () => wheel.DelayAsync(TimeSpan.FromMilliseconds(5)),
                () => io.Reactor.Timers.DelayAsync(TimeSpan.FromMilliseconds(5)),
                () =>
                {
                    PooledValueTaskSource source = PooledValueTaskSource.Rent();
                    ValueTask t = source.Task;
                    _ = Task.Run(() => source.TrySetResult());
                    return t;
                },
                () =>
                {
                    ValueTask<int> receive = client.ReceiveAsync(new byte[1]);
                    _ = Task.Run(async () => await connection.Output.WriteAsync(new byte[] { 1 }));
                    return new ValueTask(receive.AsTask());
                },
            };

            for (int i = 0; i < kinds.Count; i++)
            {
                Func<ValueTask> start = kinds[i];
                var continuationRan = new TaskCompletionSource<(string?, bool)>(TaskCreationOptions.RunContinuationsAsynchronously);
                await io.Scheduler.Factory.StartNew(() =>
                {
                    ValueTask awaited = start();
                    ValueTaskAwaiter awaiter = awaited.GetAwaiter();
                    s_local.Value = "registrant";
                    Action continuation = () =>
                    {
                        bool onWorker = io.Scheduler.IsWorkerThread;
                        string? seen = s_local.Value;
                        awaiter.GetResult();
                        s_local.Value = "leaked";
                        continuationRan.SetResult((seen, onWorker));
                    };
                    if (unsafeOnCompleted)
                    {
                        awaiter.UnsafeOnCompleted(continuation);
                    }
                    else
                    {
                        awaiter.OnCompleted(continuation);
                    }
                }).WaitAsync(Bound);
                (string?, bool) ran = await continuationRan.Task.WaitAsync(Bound);
                ran.Item2.Should().BeTrue("kind {0}: the continuation comes back to the worker", i);
                if (!unsafeOnCompleted)
                {
                    ran.Item1.Should().Be("registrant", "kind {0}: OnCompleted flows the registrant's ExecutionContext", i);
                }
                else
                {
                    ran.Item1.Should().NotBe("leaked", "kind {0}: the previous round's value must not be seen", i);
                }

                Task<string?> next;
                using (ExecutionContext.SuppressFlow())
                {
                    next = io.Scheduler.Factory.StartNew(() => s_local.Value);
                }

                (await next.WaitAsync(Bound)).Should().BeNull("kind {0}: a continuation's AsyncLocal must not reach the next task on that worker", i);
            }
        }
    }
}
