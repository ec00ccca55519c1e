using System.Net;
using System.Net.Sockets;
using Scheduler.IO;
using Scheduler.Tests.Scheduling;

namespace Scheduler.Tests.IO;

/// <summary>
/// Adversarial scenarios for <see cref="ReactorSocket"/> and <see cref="IoReactor"/> themselves: argument and endpoint
/// validation, error codes and messages, concurrent operations refused while the first one completes intact, many
/// cancellations, resets of half of many connections mid-transfer, reactors disposed under load or sharing a
/// scheduler, a scheduler disposed under a pending receive, and descriptor churn. Every wait is bounded so a hang
/// fails the test instead of the run. In the stress group: one test counts the process's socket descriptors.
/// </summary>
[Collection(nameof(IoStressGroup))]
public sealed class AdversarialSocketTests
{
    private static readonly TimeSpan Guard = TimeSpan.FromSeconds(10);

    private sealed class CustomEndPoint : EndPoint
    {
        public override AddressFamily AddressFamily => AddressFamily.InterNetwork;
    }

    private static string TempSocketPath() => Path.Combine(Path.GetTempPath(), $"adv-{Guid.NewGuid():N}.sock");

    private static int ClosedPort(AddressFamily family)
    {
        using var probe = new Socket(family, SocketType.Stream, ProtocolType.Tcp);
        probe.Bind(new IPEndPoint(family == AddressFamily.InterNetwork ? IPAddress.Loopback : IPAddress.IPv6Loopback, 0));
        return ((IPEndPoint)probe.LocalEndPoint!).Port;
    }

    [Fact]
    public async Task ConnectAsync_and_Listen_refuse_null_and_unsupported_endpoints_with_useful_messages()
    {
        await using var io = new IoTestContext();
        FluentActions.Invoking(() => ReactorSocket.ConnectAsync(null!, IoTestContext.Loopback)).Should().Throw<ArgumentNullException>()
            .Which.ParamName.Should().Be("reactor");
        FluentActions.Invoking(() => ReactorSocket.ConnectAsync(io.Reactor, null!)).Should().Throw<ArgumentNullException>()
            .Which.ParamName.Should().Be("endPoint");

        ArgumentException dns = FluentActions.Invoking(() => ReactorSocket.ConnectAsync(io.Reactor, new DnsEndPoint("localhost", 80)))
            .Should().Throw<ArgumentException>().Which;
        dns.ParamName.Should().Be("endPoint");
        dns.Message.Should().Contain("DnsEndPoint").And.Contain("resolve");

        ArgumentException custom = FluentActions.Invoking(() => ReactorSocket.Listen(io.Reactor, new CustomEndPoint()))
            .Should().Throw<ArgumentException>().Which;
        custom.Message.Should().Contain(nameof(CustomEndPoint));
        FluentActions.Invoking(() => ReactorSocket.ConnectAsync(io.Reactor, new CustomEndPoint())).Should().Throw<ArgumentException>();
        FluentActions.Invoking(() => ReactorSocket.Listen(io.Reactor, IoTestContext.Loopback, backlog: -5)).Should().Throw<ArgumentOutOfRangeException>();

        // None of the refusals left a socket behind.
        io.Reactor.RegisteredCount.Should().Be(0);
    }

    [Fact]
    public async Task Bind_errors_are_SocketExceptions_that_name_the_endpoint_and_leave_nothing_registered()
    {
        await using var io = new IoTestContext();

        // An address this host does not own (TEST-NET-1).
        var foreign = new IPEndPoint(IPAddress.Parse("192.0.2.1"), 0);
        SocketException notLocal = FluentActions.Invoking(() => ReactorSocket.Listen(io.Reactor, foreign)).Should().Throw<SocketException>().Which;
        notLocal.SocketErrorCode.Should().Be(SocketError.AddressNotAvailable);
        notLocal.Message.Should().Contain("192.0.2.1");

        // Listening twice on one port, IPv4 then IPv6 any (dual mode: bindv6only is 0 by default on Linux).
        using ReactorSocket v4 = io.Listen(new IPEndPoint(IPAddress.Any, 0));
        int port = ((IPEndPoint)v4.LocalEndPoint!).Port;
        FluentActions.Invoking(() => ReactorSocket.Listen(io.Reactor, new IPEndPoint(IPAddress.Any, port))).Should().Throw<SocketException>()
            .Which.SocketErrorCode.Should().Be(SocketError.AddressAlreadyInUse);
        if (File.ReadAllText("/proc/sys/net/ipv6/bindv6only").Trim() == "0")
        {
            FluentActions.Invoking(() => ReactorSocket.Listen(io.Reactor, new IPEndPoint(IPAddress.IPv6Any, port))).Should().Throw<SocketException>()
                .Which.SocketErrorCode.Should().Be(SocketError.AddressAlreadyInUse);
        }

        io.Reactor.RegisteredCount.Should().Be(1, "only the first listener is registered");

        // The listener that won is unharmed by the failed attempts.
        await io.RunOnPair(v4, async (client, server) =>
        {
            await client.SendAsync(new byte[] { 3 });
            var b = new byte[1];
            await IoTestContext.ReceiveExactlyAsync(server, b);
            b[0].Should().Be(3);
        }, Guard);
    }

    [Fact]
    public async Task Refused_connects_over_IPv4_and_IPv6_report_ConnectionRefused_and_close_their_socket()
    {
        await using var io = new IoTestContext();
        foreach (var endPoint in new[]
                 {
                     new IPEndPoint(IPAddress.Loopback, ClosedPort(AddressFamily.InterNetwork)),
                     new IPEndPoint(IPAddress.IPv6Loopback, ClosedPort(AddressFamily.InterNetworkV6)),
                 })
        {
            for (int i = 0; i < 20; i++)
            {
                Func<Task> connect = () => io.Run(async () => await ReactorSocket.ConnectAsync(io.Reactor, endPoint), Guard);
                SocketException e = (await connect.Should().ThrowAsync<SocketException>()).Which;
                e.SocketErrorCode.Should().Be(SocketError.ConnectionRefused);
                e.Message.Should().Contain("errno 111");
            }
        }

        io.Reactor.RegisteredCount.Should().Be(0);
    }

    [Fact]
    public async Task A_refused_connect_names_the_endpoint_whether_it_fails_at_once_or_after_waiting()
    {
        // The synchronous path (a Unix domain connect, refused inside connect(2)) says "connect to <endpoint> failed";
        // a TCP connect is refused after EINPROGRESS, through SO_ERROR. Both messages should say where it went.
        await using var io = new IoTestContext();
        string path = TempSocketPath();
        try
        {
            ReactorSocket.Listen(io.Reactor, new UnixDomainSocketEndPoint(path)).Dispose(); // leaves a stale socket file
            Func<Task> unix = () => io.Run(async () => await ReactorSocket.ConnectAsync(io.Reactor, new UnixDomainSocketEndPoint(path)), Guard);
            (await unix.Should().ThrowAsync<SocketException>()).Which.Message.Should().Contain(path);
        }
        finally
        {
            File.Delete(path);
        }

        var tcp = new IPEndPoint(IPAddress.Loopback, ClosedPort(AddressFamily.InterNetwork));
        Func<Task> refused = () => io.Run(async () => await ReactorSocket.ConnectAsync(io.Reactor, tcp), Guard);
        SocketException e = (await refused.Should().ThrowAsync<SocketException>()).Which;
        e.SocketErrorCode.Should().Be(SocketError.ConnectionRefused);
        e.Message.Should().Contain(tcp.ToString(), "the message of a refused TCP connect should name where it went");
    }

    [Fact]
    public async Task Unix_domain_errors_missing_directory_path_in_use_and_stale_file()
    {
        await using var io = new IoTestContext();

        // A directory that does not exist: bind fails, nothing is created, nothing registered.
        string missingDir = Path.Combine(Path.GetTempPath(), $"adv-missing-{Guid.NewGuid():N}", "s.sock");
        FluentActions.Invoking(() => ReactorSocket.Listen(io.Reactor, new UnixDomainSocketEndPoint(missingDir))).Should().Throw<SocketException>()
            .Which.Message.Should().Contain(missingDir);
        Directory.Exists(Path.GetDirectoryName(missingDir)).Should().BeFalse();

        string path = TempSocketPath();
        try
        {
            var endPoint = new UnixDomainSocketEndPoint(path);
            ReactorSocket first = io.Listen(endPoint);
            try
            {
                // The path is taken by a live listener: AddressAlreadyInUse, and the file (the first's) stays.
                FluentActions.Invoking(() => ReactorSocket.Listen(io.Reactor, endPoint)).Should().Throw<SocketException>()
                    .Which.SocketErrorCode.Should().Be(SocketError.AddressAlreadyInUse);
                File.Exists(path).Should().BeTrue();
                await io.Run(async () =>
                {
                    ValueTask<ReactorSocket> accept = first.AcceptAsync();
                    using ReactorSocket client = await ReactorSocket.ConnectAsync(io.Reactor, endPoint);
                    using ReactorSocket server = await accept;
                    client.LocalEndPoint.Should().NotBeNull("an unnamed Unix domain client still has a local endpoint");
                    client.RemoteEndPoint!.ToString().Should().Be(path);
                    server.LocalEndPoint!.ToString().Should().Be(path);
                    server.RemoteEndPoint.Should().NotBeNull();
                    await client.SendAsync(new byte[] { 1, 2 });
                    var b = new byte[2];
                    await IoTestContext.ReceiveExactlyAsync(server, b);
                    b.Should().Equal(1, 2);
                }, Guard);
            }
            finally
            {
                first.Dispose();
            }

            // The file outlives the listener (documented); connecting to it is refused, not hung.
            File.Exists(path).Should().BeTrue();
            Func<Task> stale = () => io.Run(async () => await ReactorSocket.ConnectAsync(io.Reactor, endPoint), Guard);
            (await stale.Should().ThrowAsync<SocketException>()).Which.SocketErrorCode.Should().Be(SocketError.ConnectionRefused);
            io.Reactor.RegisteredCount.Should().Be(0);
        }
        finally
        {
            File.Delete(path);
        }
    }

    [Fact]
    public async Task A_unix_domain_path_of_the_maximum_length_listens_connects_and_reports_itself()
    {
        // sun_path holds 108 bytes, the terminating NUL included: 107 is the longest path UnixDomainSocketEndPoint takes.
        string dir = Path.Combine(Path.GetTempPath(), $"adv-{Guid.NewGuid():N}");
        Directory.CreateDirectory(dir);
        try
        {
            string path = Path.Combine(dir, new string('p', 107 - dir.Length - 1));
            System.Text.Encoding.UTF8.GetByteCount(path).Should().Be(107);
            FluentActions.Invoking(() => new UnixDomainSocketEndPoint(path + "x")).Should().Throw<ArgumentOutOfRangeException>();
            await using var io = new IoTestContext();
            using ReactorSocket listener = io.Listen(new UnixDomainSocketEndPoint(path));
            listener.LocalEndPoint!.ToString().Should().Be(path);
            await io.Run(async () =>
            {
                ValueTask<ReactorSocket> accept = listener.AcceptAsync();
                using ReactorSocket client = await ReactorSocket.ConnectAsync(io.Reactor, new UnixDomainSocketEndPoint(path));
                using ReactorSocket server = await accept;
                client.RemoteEndPoint!.ToString().Should().Be(path);
                await client.SendAsync(new byte[] { 4 });
                var b = new byte[1];
                await IoTestContext.ReceiveExactlyAsync(server, b);
                b[0].Should().Be(4);
            }, Guard);
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    [Fact]
    public async Task Endpoints_of_a_disposed_socket_are_null_as_documented_even_when_read_before()
    {
        // XML docs: LocalEndPoint is null "when it cannot be determined (e.g. after disposal)", RemoteEndPoint is
        // "null for a listening or disposed socket".
        await using var io = new IoTestContext();
        using ReactorSocket listener = io.Listen();
        (ReactorSocket client, ReactorSocket server) = await io.ConnectPairOnSchedulerAsync(listener);
        client.Dispose();
        server.RemoteEndPoint.Should().NotBeNull();
        server.LocalEndPoint.Should().NotBeNull();
        server.Dispose();
        server.RemoteEndPoint.Should().BeNull("the socket is disposed");
        server.LocalEndPoint.Should().BeNull("the socket is disposed");
    }

    [Fact]
    public async Task Disposing_the_reactor_from_a_completion_continuation_on_a_worker_fails_the_rest_and_does_not_deadlock()
    {
        var io = new IoTestContext();
        try
        {
            using ReactorSocket listener = io.Listen();
            (ReactorSocket client, ReactorSocket server) = await io.ConnectPairOnSchedulerAsync(listener);
            (ReactorSocket client2, ReactorSocket server2) = await io.ConnectPairOnSchedulerAsync(listener);
            Task<int> other = io.Run(async () => await server2.ReceiveAsync(new byte[4]), Guard);
            Task disposer = io.Run(async () =>
            {
                (await server.ReceiveAsync(new byte[4])).Should().Be(1);
                io.Reactor.Dispose(); // on a worker, right after a completion the reactor delivered
            }, Guard);
            await io.Run(async () => await client.SendAsync(new byte[] { 1 }), Guard);
            await disposer;
            Func<Task> awaitOther = () => other;
            await awaitOther.Should().ThrowAsync<ObjectDisposedException>();
            io.Reactor.RegisteredCount.Should().Be(0);
            client.Dispose();
            client2.Dispose();
        }
        finally
        {
            await io.DisposeAsync();
        }
    }

    [Fact]
    public async Task Send_after_own_send_shutdown_fails_with_Shutdown_and_receive_after_receive_shutdown_returns_zero()
    {
        await using var io = new IoTestContext();
        using ReactorSocket listener = io.Listen();
        await io.RunOnPair(listener, async (client, server) =>
        {
            client.Shutdown(SocketShutdown.Send);
            Func<Task> send = async () => await client.SendAsync(new byte[] { 1 });
            (await send.Should().ThrowAsync<SocketException>()).Which.SocketErrorCode.Should().Be(SocketError.Shutdown);
            (await server.ReceiveAsync(new byte[4])).Should().Be(0);

            // A receive parked before our own receive-side shutdown wakes up with 0 rather than hanging.
            ValueTask<int> parked = client.ReceiveAsync(new byte[4]);
            parked.IsCompleted.Should().BeFalse();
            client.Shutdown(SocketShutdown.Receive);
            (await parked.AsTask().WaitAsync(Guard)).Should().Be(0);

            // The socket reports an empty send as done without touching the kernel, even shut down.
            (await client.SendAsync(ReadOnlyMemory<byte>.Empty)).Should().Be(0);
        }, Guard);
    }

    [Fact]
    public async Task Shutting_down_a_listener_ends_its_pending_accept_instead_of_hanging()
    {
        await using var io = new IoTestContext();
        using ReactorSocket listener = io.Listen();
        await io.Run(async () =>
        {
            ValueTask<ReactorSocket> accept = listener.AcceptAsync();
            accept.IsCompleted.Should().BeFalse();
            listener.Shutdown(SocketShutdown.Both);
            Func<Task> awaiting = async () => await accept.AsTask().WaitAsync(Guard);
            SocketException e = (await awaiting.Should().ThrowAsync<SocketException>()).Which;

            // Linux fails accept on a shut-down listener with EINVAL; the message names the call (session 48's Stryker
            // run: no test read it).
            e.SocketErrorCode.Should().Be(SocketError.InvalidArgument);
            e.Message.Should().StartWith("accept4 failed");
        }, Guard);
    }

    [Fact]
    public async Task A_second_send_is_refused_while_the_first_completes_with_every_byte_intact()
    {
        await using var io = new IoTestContext();
        using ReactorSocket listener = io.Listen();
        await io.RunOnPair(listener, async (client, server) =>
        {
            byte[] big = IoTestContext.Pattern(8 << 20, 11);
            ValueTask<int> first = client.SendAsync(big);
            first.IsCompleted.Should().BeFalse("nobody reads yet, the kernel cannot take 8 MB");
            for (int i = 0; i < 100; i++)
            {
                Func<Task> second = async () => await client.SendAsync(new byte[] { 0xFF });
                await second.Should().ThrowAsync<InvalidOperationException>();
            }

            // A second receive is refused while the first is parked, and the first still gets its byte.
            ValueTask<int> firstReceive = client.ReceiveAsync(new byte[1]);
            Func<Task> secondReceive = async () => await client.ReceiveAsync(new byte[1]);
            await secondReceive.Should().ThrowAsync<InvalidOperationException>();

            var received = new byte[big.Length];
            await IoTestContext.ReceiveExactlyAsync(server, received);
            (await first).Should().Be(big.Length);
            received.AsSpan().SequenceEqual(big).Should().BeTrue("the refused sends must not interleave a byte");

            await server.SendAsync(new byte[] { 42 });
            (await firstReceive).Should().Be(1);

            // Both directions are free again.
            await IoTestContext.AssertByteCrossesAsync(client, server, 7);
        }, Guard);
    }

    [Fact]
    public async Task A_thousand_cancelled_receives_and_accepts_leave_both_sockets_usable_and_lose_nothing()
    {
        await using var io = new IoTestContext();
        using ReactorSocket listener = io.Listen();
        await io.Run(async () =>
        {
            for (int i = 0; i < 300; i++)
            {
                using var cts = new CancellationTokenSource();
                ValueTask<ReactorSocket> accept = listener.AcceptAsync(cts.Token);
                cts.Cancel();
                Func<Task> awaiting = async () => await accept;
                (await awaiting.Should().ThrowAsync<OperationCanceledException>()).Which.CancellationToken.Should().Be(cts.Token);
            }

            (ReactorSocket client, ReactorSocket server) = await io.ConnectPairAsync(listener);
            using (client)
            using (server)
            {
                var buffer = new byte[64];
                for (int i = 0; i < 1000; i++)
                {
                    using var cts = new CancellationTokenSource();
                    ValueTask<int> receive = server.ReceiveAsync(buffer, cts.Token);
                    if (i % 3 == 0)
                    {
                        // Cancelled from another thread while parked.
                        await Task.Run(cts.Cancel);
                    }
                    else
                    {
                        cts.Cancel();
                    }

                    Func<Task> awaiting = async () => await receive;
                    await awaiting.Should().ThrowAsync<OperationCanceledException>();
                }

                // Every cancelled receive consumed nothing: a 1 MB stream arrives whole and in order.
                byte[] message = IoTestContext.Pattern(1 << 20, 12);
                Task sending = client.SendAsync(message).AsTask();
                var received = new byte[message.Length];
                await IoTestContext.ReceiveExactlyAsync(server, received);
                await sending;
                received.AsSpan().SequenceEqual(message).Should().BeTrue();
            }
        }, Guard);
    }

    [Fact]
    public async Task Operations_pending_in_both_directions_at_Dispose_fail_with_ObjectDisposedException_and_the_peer_sees_the_close()
    {
        await using var io = new IoTestContext();
        using ReactorSocket listener = io.Listen();
        (ReactorSocket client, ReactorSocket server) = await io.ConnectPairOnSchedulerAsync(listener);
        using (client)
        {
            Task<int> receive = io.Run(async () => await server.ReceiveAsync(new byte[16]), Guard);
            Task<int> send = io.Run(async () => await server.SendAsync(new byte[32 << 20]), Guard);

            // Disposed from a thread that is neither a worker nor the reactor, while both operations park.
            await Task.Run(async () =>
            {
                await Task.Delay(100);
                server.Dispose();
            });
            Func<Task> awaitReceive = () => receive;
            Func<Task> awaitSend = () => send;
            await awaitReceive.Should().ThrowAsync<ObjectDisposedException>();
            await awaitSend.Should().ThrowAsync<ObjectDisposedException>();

            server.Invoking(s => s.Shutdown(SocketShutdown.Send)).Should().Throw<ObjectDisposedException>();
            Func<Task> after = async () => await server.ReceiveAsync(new byte[1]);
            await after.Should().ThrowAsync<ObjectDisposedException>();

            // The peer is not left hanging: it reads what was sent, then the end (or a reset, unread data was dropped).
            Func<Task> drain = () => io.Run(async () =>
            {
                var buffer = new byte[1 << 16];
                while (await client.ReceiveAsync(buffer) > 0)
                {
                }
            }, Guard);
            try
            {
                await drain();
            }
            catch (SocketException e)
            {
                e.SocketErrorCode.Should().Be(SocketError.ConnectionReset);
            }

            io.Reactor.RegisteredCount.Should().Be(2, "the listener and the client are still registered");
        }
    }

    [Fact]
    public async Task Resetting_half_of_many_connections_mid_transfer_leaves_the_others_intact()
    {
        const int Connections = 16;
        const int Length = 1 << 20;
        await using var io = new IoTestContext();
        using ReactorSocket listener = io.Listen();
        var peers = new Socket[Connections];
        var servers = new ReactorSocket[Connections];
        try
        {
            for (int i = 0; i < Connections; i++)
            {
                peers[i] = IoTestContext.NewPlainSocket();
                servers[i] = await io.AcceptConnectedAsync(listener, peers[i]);
            }

            // Our side streams a pattern, shuts down its send side, and waits for the peer's end.
            Task[] serverTasks = servers.Select((server, i) => io.Run(async () =>
            {
                byte[] pattern = IoTestContext.Pattern(Length, 100 + i);
                for (int offset = 0; offset < Length; offset += 64 << 10)
                {
                    await server.SendAsync(pattern.AsMemory(offset, 64 << 10));
                }

                server.Shutdown(SocketShutdown.Send);
                (await server.ReceiveAsync(new byte[16])).Should().Be(0);
            }, Guard)).ToArray();

            // Even peers read a little and reset; odd peers read the whole stream, check it and close in order.
            Task[] peerTasks = peers.Select((peer, i) => Task.Run(async () =>
            {
                byte[] pattern = IoTestContext.Pattern(Length, 100 + i);
                if (i % 2 == 0)
                {
                    var part = new byte[100_000];
                    await IoTestContext.ReceiveExactlyAsync(peer, part);
                    part.AsSpan().SequenceEqual(pattern.AsSpan(0, part.Length)).Should().BeTrue();
                    peer.LingerState = new LingerOption(true, 0);
                    peer.Close(); // RST
                    return;
                }

                var all = new byte[Length];
                await IoTestContext.ReceiveExactlyAsync(peer, all);
                all.AsSpan().SequenceEqual(pattern).Should().BeTrue("connection {0} is untouched by its neighbours' resets", i);
                (await peer.ReceiveAsync(new byte[1])).Should().Be(0);
                peer.Shutdown(SocketShutdown.Send);
            }).WaitAsync(Guard)).ToArray();

            await Task.WhenAll(peerTasks);
            for (int i = 0; i < Connections; i++)
            {
                Exception? error = await Record.ExceptionAsync(() => serverTasks[i]);
                if (i % 2 == 0)
                {
                    error.Should().BeOfType<SocketException>("the reset reaches connection {0}: {1}", i, error);
                }
                else
                {
                    error.Should().BeNull("connection {0} finished in order", i);
                }
            }
        }
        finally
        {
            foreach (Socket? peer in peers)
            {
                peer?.Dispose();
            }

            foreach (ReactorSocket? server in servers)
            {
                server?.Dispose();
            }
        }
    }

    [Fact]
    public async Task Disposing_a_reactor_with_hundreds_of_sockets_fails_every_pending_operation_and_closes_every_fd()
    {
        var scheduler = SchedulerTestHelpers.Create(2);
        await using var disposeScheduler = SchedulerTestHelpers.DisposeWithin(scheduler);
        (int Sockets, int Epolls) before = ReactorDescriptors.Count();
        var reactor = new IoReactor(scheduler);
        ReactorSocket listener = ReactorSocket.Listen(reactor, IoTestContext.Loopback);
        var pending = new List<Task>();
        var pairs = new List<(ReactorSocket, ReactorSocket)>();
        await scheduler.Factory.StartNew(async () =>
        {
            for (int i = 0; i < 150; i++)
            {
                ValueTask<ReactorSocket> accept = listener.AcceptAsync();
                ReactorSocket client = await ReactorSocket.ConnectAsync(reactor, listener.LocalEndPoint!);
                ReactorSocket server = await accept;
                pairs.Add((client, server));
                pending.Add(client.ReceiveAsync(new byte[8]).AsTask());
                pending.Add(server.ReceiveAsync(new byte[8]).AsTask());
            }

            pending.Add(listener.AcceptAsync().AsTask());
        }).Unwrap().WaitAsync(Guard);

        // Connections queued in the kernel's backlog of a listener nobody accepts on are closed with it.
        ReactorSocket idleListener = ReactorSocket.Listen(reactor, IoTestContext.Loopback);
        var backlog = new List<Socket>();
        for (int i = 0; i < 10; i++)
        {
            var plain = IoTestContext.NewPlainSocket();
            await plain.ConnectAsync(idleListener.LocalEndPoint!).WaitAsync(Guard);
            backlog.Add(plain);
        }

        reactor.RegisteredCount.Should().Be(302);
        await Task.Factory.StartNew(reactor.Dispose, CancellationToken.None, TaskCreationOptions.LongRunning, TaskScheduler.Default).WaitAsync(Guard);
        reactor.RegisteredCount.Should().Be(0);
        foreach (Task task in pending)
        {
            Exception? error = await Record.ExceptionAsync(() => task.WaitAsync(Guard));
            error.Should().BeOfType<ObjectDisposedException>("every operation pending at the reactor's disposal fails with it (got {0})", error);
        }

        FluentActions.Invoking(() => ReactorSocket.Listen(reactor, IoTestContext.Loopback)).Should().Throw<ObjectDisposedException>();
        FluentActions.Invoking(() => ReactorSocket.ConnectAsync(reactor, IoTestContext.Loopback)).Should().Throw<ObjectDisposedException>();
        Func<Task> receiveAfter = async () => await pairs[0].Item1.ReceiveAsync(new byte[1]);
        await receiveAfter.Should().ThrowAsync<ObjectDisposedException>();
        reactor.Dispose(); // idempotent

        backlog.ForEach(s => s.Dispose());
        (int Sockets, int Epolls) after = ReactorDescriptors.Count();
        after.Sockets.Should().BeLessThanOrEqualTo(before.Sockets + 2, "the reactor's disposal closed every socket it held");
        after.Epolls.Should().BeLessThanOrEqualTo(before.Epolls);
    }

    [Fact]
    public async Task Two_reactors_on_one_scheduler_talk_to_each_other_and_survive_each_others_disposal()
    {
        var scheduler = SchedulerTestHelpers.Create(2);
        await using var disposeScheduler = SchedulerTestHelpers.DisposeWithin(scheduler);
        var a = new IoReactor(scheduler);
        using var b = new IoReactor(scheduler);
        ReactorSocket aListener = ReactorSocket.Listen(a, IoTestContext.Loopback);
        using ReactorSocket bListener = ReactorSocket.Listen(b, IoTestContext.Loopback);
        await scheduler.Factory.StartNew(async () =>
        {
            ValueTask<ReactorSocket> accept = aListener.AcceptAsync();
            using ReactorSocket fromB = await ReactorSocket.ConnectAsync(b, aListener.LocalEndPoint!);
            ReactorSocket onA = await accept;
            byte[] message = IoTestContext.Pattern(300_000, 21);
            Task sending = fromB.SendAsync(message).AsTask();
            var received = new byte[message.Length];
            await IoTestContext.ReceiveExactlyAsync(onA, received);
            await sending;
            received.AsSpan().SequenceEqual(message).Should().BeTrue();

            // B's receive is parked when A goes away with its sockets: B sees the end of its connection only.
            ValueTask<int> parked = fromB.ReceiveAsync(new byte[8]);
            parked.IsCompleted.Should().BeFalse();
            a.Dispose();
            (await parked.AsTask().WaitAsync(Guard)).Should().Be(0);
            Func<Task> onADisposed = async () => await onA.ReceiveAsync(new byte[1]);
            await onADisposed.Should().ThrowAsync<ObjectDisposedException>();

            // B and the shared scheduler carry on.
            ValueTask<ReactorSocket> acceptB = bListener.AcceptAsync();
            using ReactorSocket client = await ReactorSocket.ConnectAsync(b, bListener.LocalEndPoint!);
            using ReactorSocket server = await acceptB;
            await client.SendAsync(new byte[] { 9, 8, 7 });
            var three = new byte[3];
            await IoTestContext.ReceiveExactlyAsync(server, three);
            three.Should().Equal(9, 8, 7);
        }).Unwrap().WaitAsync(Guard);
        b.RegisteredCount.Should().Be(1);
        a.RegisteredCount.Should().Be(0);
    }

    [Fact]
    public async Task A_receive_pending_when_its_scheduler_is_disposed_still_completes_and_the_reactor_keeps_serving()
    {
        var scheduler = SchedulerTestHelpers.Create(2);
        using var reactor = new IoReactor(scheduler);
        using ReactorSocket listener = ReactorSocket.Listen(reactor, IoTestContext.Loopback);
        (ReactorSocket client, ReactorSocket server) = await scheduler.Factory.StartNew(async () =>
        {
            ValueTask<ReactorSocket> accept = listener.AcceptAsync();
            ReactorSocket c = await ReactorSocket.ConnectAsync(reactor, listener.LocalEndPoint!);
            return (c, await accept);
        }).Unwrap().WaitAsync(Guard);
        using (client)
        using (server)
        {
            var buffer = new byte[5];
            Task<int> pending = scheduler.Factory.StartNew(async () =>
            {
                int n = await server.ReceiveAsync(buffer);
                return n;
            }).Unwrap();
            Task<int> pendingSecondDirection = scheduler.Factory.StartNew(async () => await client.ReceiveAsync(new byte[1])).Unwrap();

            // The scheduler goes away while both receives are parked (its workers have nothing queued and exit).
            await scheduler.DisposeAsync().AsTask().WaitAsync(Guard);
            pending.IsCompleted.Should().BeFalse();

            // Their completions still arrive (on the ThreadPool now), neither lost nor thrown at the reactor thread.
            (await client.SendAsync(new byte[] { 1, 2, 3, 4, 5 }).AsTask().WaitAsync(Guard)).Should().Be(5);
            (await pending.WaitAsync(Guard)).Should().BeGreaterThan(0);
            buffer[0].Should().Be(1);

            // The reactor still serves new sockets awaited off the scheduler.
            ValueTask<ReactorSocket> accept = listener.AcceptAsync();
            using ReactorSocket c2 = await ReactorSocket.ConnectAsync(reactor, listener.LocalEndPoint!).AsTask().WaitAsync(Guard);
            using ReactorSocket s2 = await accept.AsTask().WaitAsync(Guard);
            await IoTestContext.AssertByteCrossesAsync(c2, s2, 6).WaitAsync(Guard);

            // Disposing the reactor fails the other parked receive, whose continuation still runs somewhere.
            reactor.Dispose();
            Func<Task> second = () => pendingSecondDirection.WaitAsync(Guard);
            await second.Should().ThrowAsync<ObjectDisposedException>();
        }
    }

    [Fact]
    public async Task Thousands_of_connect_accept_dispose_cycles_leak_no_descriptor_and_no_registration()
    {
        await using var io = new IoTestContext();
        using ReactorSocket listener = io.Listen(backlog: 1024);
        int closedPort = ClosedPort(AddressFamily.InterNetwork);

        // Warm up: whatever the runtime opens once (none expected) is opened before the count.
        await io.RunOnPair(listener, async (c, s) => await c.SendAsync(new byte[1]), Guard);
        (int Sockets, int Epolls) before = ReactorDescriptors.Count();

        await io.Run(async () =>
        {
            for (int batch = 0; batch < 100; batch++)
            {
                var rounds = new Task[25];
                for (int i = 0; i < rounds.Length; i++)
                {
                    // One accept at a time: the pairs are made in turn, their lives run concurrently.
                    int round = (batch * rounds.Length) + i;
                    (ReactorSocket, ReactorSocket)? pair = round % 10 == 9 ? null : await io.ConnectPairAsync(listener);
                    rounds[i] = Cycle(round, pair);
                }

                await Task.WhenAll(rounds);
            }
        }, TimeSpan.FromSeconds(30));

        async Task Cycle(int round, (ReactorSocket Client, ReactorSocket Server)? pair)
        {
            if (pair is null)
            {
                try
                {
                    using ReactorSocket never = await ReactorSocket.ConnectAsync(io.Reactor, new IPEndPoint(IPAddress.Loopback, closedPort));
                }
                catch (SocketException e) when (e.SocketErrorCode == SocketError.ConnectionRefused)
                {
                }

                return;
            }

            (ReactorSocket client, ReactorSocket server) = pair.Value;
            using (client)
            using (server)
            {
                switch (round % 4)
                {
                    case 0: // a receive pending at Dispose
                        ValueTask<int> parked = server.ReceiveAsync(new byte[4]);
                        server.Dispose();
                        try
                        {
                            await parked;
                        }
                        catch (ObjectDisposedException)
                        {
                        }

                        break;
                    case 1: // a cancelled receive, then data
                        using (var cts = new CancellationTokenSource())
                        {
                            ValueTask<int> r = server.ReceiveAsync(new byte[4], cts.Token);
                            cts.Cancel();
                            try
                            {
                                await r;
                            }
                            catch (OperationCanceledException)
                            {
                            }
                        }

                        await client.SendAsync(new byte[] { 1 });
                        await IoTestContext.ReceiveExactlyAsync(server, new byte[1]);
                        break;
                    case 2: // orderly close
                        client.Shutdown(SocketShutdown.Send);
                        (await server.ReceiveAsync(new byte[4])).Should().Be(0);
                        break;
                    default: // closed with unread data (a reset)
                        await server.SendAsync(new byte[100]);
                        break;
                }
            }
        }

        // A listener closed with connections still in its accept batch and backlog.
        ReactorSocket second = io.Listen();
        var plain = new List<Socket>();
        for (int i = 0; i < 40; i++)
        {
            var s = IoTestContext.NewPlainSocket();
            await s.ConnectAsync(second.LocalEndPoint!).WaitAsync(Guard);
            plain.Add(s);
        }

        (await io.Run(async () => await second.AcceptAsync(), Guard)).Dispose();
        second.Dispose();
        plain.ForEach(s => s.Dispose());

        io.Reactor.RegisteredCount.Should().Be(1, "only the first listener is still registered");
        (int Sockets, int Epolls) after = ReactorDescriptors.Count();
        after.Sockets.Should().BeLessThanOrEqualTo(before.Sockets + 5, "2,500 cycles must not leave sockets open");
        after.Epolls.Should().BeLessThanOrEqualTo(before.Epolls);
    }
}
