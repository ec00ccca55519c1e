using System.Net.Sockets;
using Scheduler.IO;
using Scheduler.Tests.Scheduling;

namespace Scheduler.Tests.IO;

/// <summary>
/// Connecting to a Unix domain listener whose backlog is full: Linux fails a non-blocking connect with EAGAIN (not
/// EINPROGRESS, and no readiness edge tells when to try again), where a blocking connect waits for room.
/// </summary>
public sealed class UnixConnectBacklogTests
{
    [Fact]
    public async Task A_connect_to_a_full_backlog_waits_for_room_instead_of_failing_with_WouldBlock()
    {
        using var backlog = new UnixBacklogPath();
        await using var io = new IoTestContext();
        using ReactorSocket listener = io.Listen(backlog.EndPoint, backlog: 1);

        // A 200-ms window once stood for "still pending", and a loaded run that started a connect with room late
        // took it for the waiting one. A connect that failed at its call (WouldBlock before the fix) throws here.
        Task<ReactorSocket>? waiting = await backlog.ConnectUntilOneWaitsAsync(io);

        waiting.Should().NotBeNull("a connect to a full backlog waits");
        io.Reactor.RegisteredCount.Should().Be(1 + backlog.Clients.Count, "the waiting socket is registered only once connected");

        // Accepting one makes room: the waiting connect completes, connected to the listener.
        using ReactorSocket first = await io.Run(async () => await listener.AcceptAsync());
        using ReactorSocket client = await waiting!.WaitAsync(IoTestContext.Timeout);
        client.RemoteEndPoint!.ToString().Should().Be(backlog.Path);
        await io.Run(async () => await client.SendAsync(new byte[] { 42 }));

        // Registered once connected: a receive that has to wait completes on the readiness edge (an unregistered
        // socket's receive waited for good, and every check above still passed).
        io.Reactor.RegisteredCount.Should().Be(3 + backlog.Clients.Count, "the listener, the accepted socket, the clients with room and the waiting one");
        for (int i = 1; i < backlog.Clients.Count; i++)
        {
            (await io.Run(async () => await listener.AcceptAsync())).Dispose(); // the other clients with room
        }

        using ReactorSocket peer = await io.Run(async () => await listener.AcceptAsync()); // accepted in connect order
        var received = new byte[1];
        Task<int> receive = io.Run(async () => await client.ReceiveAsync(received));
        await Task.Delay(20);
        receive.IsCompleted.Should().BeFalse("nothing was sent to the client yet");
        await io.Run(async () => await peer.SendAsync(new byte[] { 7 }));
        (await receive.WaitAsync(IoTestContext.Timeout)).Should().Be(1);
        received[0].Should().Be(7);
    }

    [Fact]
    public async Task A_connect_waiting_for_room_ends_with_cancellation_or_the_reactor()
    {
        using var backlog = new UnixBacklogPath();
        var io = new IoTestContext();
        using ReactorSocket listener = io.Listen(backlog.EndPoint, backlog: 1);
        for (int i = 0; i < 2; i++)
        {
            backlog.Clients.Add(await io.Run(async () => await ReactorSocket.ConnectAsync(io.Reactor, backlog.EndPoint)));
        }

        // Cancelled while it waits: OperationCanceledException with the caller's token, nothing left registered. The
        // token is cancelled once the connect waits, not by a 100-ms timer: a loaded run could start the connect
        // after the timer fired, and a connect refused at the call for its cancelled token proves nothing here.
        using var cts = new CancellationTokenSource();
        (bool pending, Task<ReactorSocket> connect) = await io.StartConnect(backlog.EndPoint, cts.Token);
        pending.Should().BeTrue("the backlog is full");
        await cts.CancelAsync();
        Func<Task> cancelled = () => connect.WaitAsync(IoTestContext.Timeout);
        (await cancelled.Should().ThrowAsync<OperationCanceledException>()).Which.CancellationToken.Should().Be(cts.Token);
        io.Reactor.RegisteredCount.Should().Be(3);

        // The reactor disposed while it waits: ObjectDisposedException, as for any pending operation.
        Task<ReactorSocket> waiting = io.Run(async () => await ReactorSocket.ConnectAsync(io.Reactor, backlog.EndPoint));
        await Task.Delay(50);
        waiting.IsCompleted.Should().BeFalse();
        await io.DisposeAsync();
        Func<Task> disposed = () => waiting.WaitAsync(IoTestContext.Timeout);
        await disposed.Should().ThrowAsync<ObjectDisposedException>();
    }

    [Fact]
    public async Task A_connect_whose_pause_ended_just_before_the_reactor_was_disposed_reports_the_disposal()
    {
        // A CI run: the waiting connect's delay completed, the disposal closed the listener (registered with the same
        // reactor) before the continuation ran, and connect(2) then failed with ConnectionRefused. Here one worker is
        // held while the pause ends and the reactor is disposed, so the continuation runs only after both.
        using var backlog = new UnixBacklogPath();
        var scheduler = new WorkStealingTaskScheduler(new WorkStealingTaskSchedulerOptions { WorkerCount = 1 });
        await using var disposeScheduler = SchedulerTestHelpers.DisposeWithin(scheduler);
        var reactor = new IoReactor(scheduler);
        try
        {
            using ReactorSocket listener = ReactorSocket.Listen(reactor, backlog.EndPoint, backlog: 1);
            for (int i = 0; i < 2; i++)
            {
                backlog.Clients.Add(await scheduler.Factory.StartNew(async () => await ReactorSocket.ConnectAsync(reactor, backlog.EndPoint)).Unwrap()
                    .WithTimeout($"Connect {i} to the listener with room", IoTestContext.Timeout));
            }

            Task<ReactorSocket> waiting = scheduler.Factory.StartNew(async () => await ReactorSocket.ConnectAsync(reactor, backlog.EndPoint)).Unwrap();
            await Task.Delay(50);
            waiting.IsCompleted.Should().BeFalse("the backlog is full");

            using var gate = new ManualResetEventSlim();
            Task holder = scheduler.Factory.StartNew(gate.Wait);
            await Task.Delay(200); // the pause (64 ms at most) ends: its continuation waits for the held worker
            reactor.Dispose();
            gate.Set();
            await holder.WaitAsync(IoTestContext.Timeout);

            Func<Task> disposed = () => waiting.WaitAsync(IoTestContext.Timeout);
            await disposed.Should().ThrowAsync<ObjectDisposedException>();
        }
        finally
        {
            reactor.Dispose();
        }
    }
}
