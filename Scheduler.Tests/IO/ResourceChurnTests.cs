using System.IO.Pipelines;
using System.Net;
using System.Net.Sockets;
using Scheduler.IO;
using Scheduler.Tests.Scheduling;

namespace Scheduler.Tests.IO;

/// <summary>
/// Thousands of sockets (and reactors) opened and closed every way they can end: afterwards the process holds no more
/// file descriptors and the reactor no more registrations than before. Run alone: the fd count is the process's.
/// </summary>
[Collection(nameof(IoStressGroup))]
public sealed class ResourceChurnTests
{
    [Fact]
    public async Task A_thousand_connections_opened_and_closed_every_way_leak_no_fd_and_no_registration()
    {
        await using var io = new IoTestContext();
        using ReactorSocket listener = io.Listen(backlog: 1024);
        int closedPort = ClosedPort();
        await WarmUpPlainSocketsAsync(io, listener);
        (int sockets, int epolls) before = ReactorDescriptors.Count();

        await io.Run(async () =>
        {
            for (int batch = 0; batch < 20; batch++)
            {
                var rounds = new Task[50];
                for (int i = 0; i < rounds.Length; i++)
                {
                    int round = (batch * rounds.Length) + i;
                    (ReactorSocket, ReactorSocket)? pair = round % 5 == 2 ? null : await io.ConnectPairAsync(listener);
                    rounds[i] = OneConnectionAsync(io, pair, closedPort, round);
                }

                await Task.WhenAll(rounds);
            }
        }, TimeSpan.FromSeconds(60));

        // Accepted connections left queued in the listener's batch when it goes are closed too.
        ReactorSocket second = io.Listen();
        var clients = new List<Socket>();
        for (int i = 0; i < 20; i++)
        {
            var client = IoTestContext.NewPlainSocket();
            await client.ConnectAsync(second.LocalEndPoint!);
            clients.Add(client);
        }

        using (ReactorSocket first = await io.Run(async () => await second.AcceptAsync()))
        {
        }

        second.Dispose();
        clients.ForEach(c => c.Dispose());

        io.Reactor.RegisteredCount.Should().Be(1, "only the listener is still registered");
        (int sockets, int epolls) after = ReactorDescriptors.Count();
        after.sockets.Should().BeLessThanOrEqualTo(before.sockets, "no socket fd may stay open");
        after.epolls.Should().BeLessThanOrEqualTo(before.epolls);
    }

    [Fact]
    public async Task Reactors_created_and_disposed_with_sockets_and_timers_in_use_leak_no_fd()
    {
        var scheduler = new WorkStealingTaskScheduler(2);
        await using var disposeScheduler = SchedulerTestHelpers.DisposeWithin(scheduler);
        await using (var io = new IoTestContext())
        using (ReactorSocket listener = io.Listen())
        {
            await WarmUpPlainSocketsAsync(io, listener);
        }

        (int sockets, int epolls) before = ReactorDescriptors.Count();
        for (int i = 0; i < 50; i++)
        {
            var reactor = new IoReactor(scheduler);
            ReactorSocket listener = ReactorSocket.Listen(reactor, new IPEndPoint(IPAddress.Loopback, 0));
            Task<ReactorSocket> accept = listener.AcceptAsync().AsTask();
            ReactorSocket client = await ReactorSocket.ConnectAsync(reactor, listener.LocalEndPoint!).AsTask().WithTimeout("The connect", IoTestContext.Timeout);
            ReactorSocket server = await accept.WaitAsync(IoTestContext.Timeout);
            Task<int> pending = server.ReceiveAsync(new byte[8]).AsTask();
            Task delay = reactor.Timers.DelayAsync(TimeSpan.FromMinutes(1)).AsTask();
            using var timeout = new CancellationTokenSource(TimeSpan.FromMinutes(1), reactor.Timers);

            reactor.Dispose(); // disposes every socket still registered: leaves nothing behind
            await pending.Awaiting(t => t.WaitAsync(IoTestContext.Timeout)).Should().ThrowAsync<ObjectDisposedException>();
            await delay.Awaiting(t => t.WaitAsync(IoTestContext.Timeout)).Should().ThrowAsync<ObjectDisposedException>();
            _ = client;
        }

        (int sockets, int epolls) after = ReactorDescriptors.Count();
        after.sockets.Should().BeLessThanOrEqualTo(before.sockets);
        after.epolls.Should().BeLessThanOrEqualTo(before.epolls, "every reactor's epoll and eventfd are closed");
    }

    [Fact]
    public async Task Connections_whose_close_finished_at_once_leave_no_timer_running()
    {
        // DisposeAsync bounds its wait for the output with a grace period (a second) and polls the kernel while it
        // lingers. A server that churns connections must not be left with a live timer per connection for that second
        // after each close that finished in microseconds. Serial collection: Timer.ActiveCount is the process's.
        const int Count = 200;
        await using var io = new IoTestContext();
        using ReactorSocket listener = io.Listen(backlog: 1024);
        var connections = new ReactorConnection[Count];
        var peers = new ReactorSocket[Count];
        await io.Run(async () =>
        {
            for (int i = 0; i < Count; i++)
            {
                (peers[i], ReactorSocket server) = await io.ConnectPairAsync(listener);
                connections[i] = ReactorConnection.Create(server);
            }
        });

        long before = Timer.ActiveCount;
        try
        {
            // Nothing to send: each close is over once the kernel has our FIN acknowledged (loopback: at once).
            await io.Run(() => Task.WhenAll(connections.Select(c => c.DisposeAsync().AsTask())));
            long growth = Timer.ActiveCount - before;
            growth.Should().BeLessThan(Count / 4, "a disposal that is over must not leave its grace timer running");
        }
        finally
        {
            Array.ForEach(peers, p => p.Dispose());
        }
    }

    private static async Task OneConnectionAsync(IoTestContext io, (ReactorSocket Client, ReactorSocket Server)? pair, int closedPort, int round)
    {
        switch (round % 5)
        {
            case 0:
                // Orderly: data both ways, shutdown, end of stream, dispose.
                {
                    (ReactorSocket client, ReactorSocket server) = pair!.Value;
                    using (client)
                    using (server)
                    {
                        await client.SendAsync(new byte[] { 1, 2, 3 });
                        await IoTestContext.ReceiveExactlyAsync(server, new byte[3]);
                        client.Shutdown(SocketShutdown.Send);
                        (await server.ReceiveAsync(new byte[4])).Should().Be(0);
                    }

                    break;
                }

            case 1:
                // Disposed with operations pending on both ends.
                {
                    (ReactorSocket client, ReactorSocket server) = pair!.Value;
                    ValueTask<int> a = client.ReceiveAsync(new byte[4]);
                    ValueTask<int> b = server.ReceiveAsync(new byte[4]);
                    client.Dispose();
                    server.Dispose();
                    await a.AsTask().Awaiting(t => t).Should().ThrowAsync<ObjectDisposedException>();
                    try
                    {
                        (await b).Should().Be(0, "the peer's close can come first: end of stream");
                    }
                    catch (ObjectDisposedException)
                    {
                    }

                    break;
                }

            case 2:
                // Refused.
                await FluentActions.Awaiting(async () => await ReactorSocket.ConnectAsync(io.Reactor, new IPEndPoint(IPAddress.Loopback, closedPort)))
                    .Should().ThrowAsync<SocketException>();
                break;

            case 3:
                // A pipe connection on each end, closed by DisposeAsync.
                {
                    (ReactorSocket client, ReactorSocket server) = pair!.Value;
                    var serverConnection = ReactorConnection.Create(server);
                    var clientConnection = ReactorConnection.Create(client);
                    await clientConnection.Output.WriteAsync(new byte[] { 9 });
                    ReadResult read = await serverConnection.Input.ReadAsync();
                    serverConnection.Input.AdvanceTo(read.Buffer.End);
                    await clientConnection.DisposeAsync();
                    await serverConnection.DisposeAsync();
                    break;
                }

            default:
                // Reset by the peer, our side's receive fails.
                {
                    (ReactorSocket client, ReactorSocket server) = pair!.Value;
                    using (server)
                    {
                        ValueTask<int> pending = server.ReceiveAsync(new byte[4]);
                        await client.SendAsync(new byte[] { 1 });
                        await pending;
                        await server.SendAsync(new byte[] { 1 }); // unread by client: its close resets
                        client.Dispose();
                        try
                        {
                            while (await server.ReceiveAsync(new byte[4]) > 0)
                            {
                            }
                        }
                        catch (SocketException)
                        {
                        }
                    }

                    break;
                }
        }
    }

    /// <summary>System.Net.Sockets opens its own epoll on first use: make that happen before counting.</summary>
    private static async Task WarmUpPlainSocketsAsync(IoTestContext io, ReactorSocket listener)
    {
        using Socket plain = IoTestContext.NewPlainSocket();
        using ReactorSocket accepted = await io.AcceptConnectedAsync(listener, plain);
    }

    private static int ClosedPort()
    {
        using var probe = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        probe.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        return ((IPEndPoint)probe.LocalEndPoint!).Port;
    }
}
