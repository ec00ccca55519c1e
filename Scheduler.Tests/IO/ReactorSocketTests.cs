using System.Net;
using System.Net.Sockets;
using Scheduler.IO;
using Scheduler.Tests.Scheduling;

namespace Scheduler.Tests.IO;

public sealed class ReactorSocketTests
{
    [Fact]
    public void IsSupported_on_linux_and_constructor_validates()
    {
        IoReactor.IsSupported.Should().Be(OperatingSystem.IsLinux());
        FluentActions.Invoking(() => new IoReactor(null!)).Should().Throw<ArgumentNullException>();
    }

    [Fact]
    public async Task Echo_over_ipv4_with_endpoints()
    {
        await using var io = new IoTestContext();
        using ReactorSocket listener = io.Listen();
        var local = (IPEndPoint)listener.LocalEndPoint!;
        local.Address.Should().Be(IPAddress.Loopback);
        local.Port.Should().BeGreaterThan(0);

        await io.RunOnPair(listener, async (client, server) =>
        {
            ((IPEndPoint)client.RemoteEndPoint!).Should().Be(local);
            ((IPEndPoint)server.LocalEndPoint!).Should().Be(local);
            ((IPEndPoint)server.RemoteEndPoint!).Should().Be((IPEndPoint)client.LocalEndPoint!);

            byte[] message = IoTestContext.Pattern(5000, 1);
            (await client.SendAsync(message)).Should().Be(5000);
            var received = new byte[5000];
            await IoTestContext.ReceiveExactlyAsync(server, received);
            received.Should().Equal(message);
            (await server.SendAsync(received)).Should().Be(5000);
            var echoed = new byte[5000];
            await IoTestContext.ReceiveExactlyAsync(client, echoed);
            echoed.Should().Equal(message);
        });
    }

    [Fact]
    public async Task Echo_over_ipv6()
    {
        await using var io = new IoTestContext();
        using ReactorSocket listener = io.Listen(new IPEndPoint(IPAddress.IPv6Loopback, 0));
        ((IPEndPoint)listener.LocalEndPoint!).Address.Should().Be(IPAddress.IPv6Loopback);
        await io.RunOnPair(listener, async (client, server) =>
        {
            ((IPEndPoint)server.RemoteEndPoint!).AddressFamily.Should().Be(AddressFamily.InterNetworkV6);
            await client.SendAsync(new byte[] { 1, 2, 3 });
            var buffer = new byte[3];
            await IoTestContext.ReceiveExactlyAsync(server, buffer);
            buffer.Should().Equal(1, 2, 3);
        });
    }

    [Fact]
    public async Task Echo_over_unix_domain_socket()
    {
        string path = Path.Combine(Path.GetTempPath(), $"reactor-{Guid.NewGuid():N}.sock");
        try
        {
            await using var io = new IoTestContext();
            using ReactorSocket listener = io.Listen(new UnixDomainSocketEndPoint(path));
            listener.LocalEndPoint!.ToString().Should().Be(path);
            await io.Run(async () =>
            {
                ValueTask<ReactorSocket> accept = listener.AcceptAsync();
                using ReactorSocket client = await ReactorSocket.ConnectAsync(io.Reactor, new UnixDomainSocketEndPoint(path));
                using ReactorSocket server = await accept;
                byte[] message = IoTestContext.Pattern(100_000, 2);
                Task send = client.SendAsync(message).AsTask();
                var received = new byte[message.Length];
                await IoTestContext.ReceiveExactlyAsync(server, received);
                await send;
                received.Should().Equal(message);
            });
        }
        finally
        {
            File.Delete(path);
        }
    }

    [Fact]
    public async Task Abstract_unix_domain_names_listen_connect_and_report_their_endpoints()
    {
        // Abstract names (a leading NUL) have no file to create or delete.
        var name = new UnixDomainSocketEndPoint("\0reactor-" + Guid.NewGuid().ToString("N"));
        await using var io = new IoTestContext();
        using ReactorSocket listener = io.Listen(name);
        listener.LocalEndPoint!.ToString().Should().Be(name.ToString());
        await io.Run(async () =>
        {
            ValueTask<ReactorSocket> accept = listener.AcceptAsync();
            using ReactorSocket client = await ReactorSocket.ConnectAsync(io.Reactor, name);
            using ReactorSocket server = await accept;
            client.RemoteEndPoint!.ToString().Should().Be(name.ToString());
            server.LocalEndPoint!.ToString().Should().Be(name.ToString());
            await client.SendAsync(new byte[] { 7 });
            var received = new byte[1];
            await IoTestContext.ReceiveExactlyAsync(server, received);
            received[0].Should().Be(7);
        });
    }

    [Fact]
    public async Task An_IPv6_listener_on_any_accepts_IPv4_clients_as_mapped_addresses()
    {
        await using var io = new IoTestContext();
        using ReactorSocket listener = io.Listen(new IPEndPoint(IPAddress.IPv6Any, 0));
        int port = ((IPEndPoint)listener.LocalEndPoint!).Port;
        await io.Run(async () =>
        {
            foreach (IPAddress address in new[] { IPAddress.Loopback, IPAddress.Loopback.MapToIPv6() })
            {
                ValueTask<ReactorSocket> accept = listener.AcceptAsync();
                using ReactorSocket client = await ReactorSocket.ConnectAsync(io.Reactor, new IPEndPoint(address, port));
                using ReactorSocket server = await accept;
                var remote = (IPEndPoint)server.RemoteEndPoint!;
                remote.Address.IsIPv4MappedToIPv6.Should().BeTrue();
                remote.Address.MapToIPv4().Should().Be(IPAddress.Loopback);
                await client.SendAsync(new byte[] { 7 });
                var received = new byte[1];
                await IoTestContext.ReceiveExactlyAsync(server, received);
                received[0].Should().Be(7);
            }
        });
    }

    [Fact]
    public async Task Receive_returns_zero_after_peer_shutdown()
    {
        await using var io = new IoTestContext();
        using ReactorSocket listener = io.Listen();
        await io.RunOnPair(listener, async (client, server) =>
        {
            var buffer = new byte[16];
            ValueTask<int> pending = server.ReceiveAsync(buffer);
            pending.IsCompleted.Should().BeFalse();
            await client.SendAsync(new byte[] { 9 });
            (await pending).Should().Be(1);
            client.Shutdown(SocketShutdown.Send);
            (await server.ReceiveAsync(buffer)).Should().Be(0);
            (await server.ReceiveAsync(buffer)).Should().Be(0);
            // Half-close: the other direction still works.
            await server.SendAsync(new byte[] { 7 });
            (await client.ReceiveAsync(buffer)).Should().Be(1);
            buffer[0].Should().Be(7);
        });
    }

    [Fact]
    public async Task Receive_completes_synchronously_when_data_is_already_there()
    {
        await using var io = new IoTestContext();
        using ReactorSocket listener = io.Listen();
        await io.RunOnPair(listener, async (client, server) =>
        {
            await client.SendAsync(new byte[] { 1, 2, 3, 4 });
            var buffer = new byte[4];
            int got = 0;
            // Loopback delivery is immediate, but give the kernel a moment in case the box is busy.
            for (int i = 0; i < 100 && got == 0; i++)
            {
                byte[] peek = [];
                ValueTask<int> ready = server.ReceiveAsync(peek);
                await ready;
                ValueTask<int> receive = server.ReceiveAsync(buffer);
                receive.IsCompletedSuccessfully.Should().BeTrue("data was already queued in the kernel");
                got = receive.Result;
            }

            got.Should().Be(4);
            buffer.Should().Equal(1, 2, 3, 4);
        });
    }

    [Fact]
    public async Task Empty_buffer_receive_waits_for_data_without_consuming_it()
    {
        await using var io = new IoTestContext();
        using ReactorSocket listener = io.Listen();
        await io.RunOnPair(listener, async (client, server) =>
        {
            ValueTask<int> wait = server.ReceiveAsync(Memory<byte>.Empty);
            wait.IsCompleted.Should().BeFalse();
            await client.SendAsync(new byte[] { 42 });
            (await wait).Should().Be(0);
            var buffer = new byte[1];
            (await server.ReceiveAsync(buffer)).Should().Be(1);
            buffer[0].Should().Be(42);
        });
    }

    [Fact]
    public async Task Refused_connect_throws_SocketException_ConnectionRefused()
    {
        await using var io = new IoTestContext();
        int port;
        using (var probe = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp))
        {
            probe.Bind(new IPEndPoint(IPAddress.Loopback, 0));
            port = ((IPEndPoint)probe.LocalEndPoint!).Port;
        }

        Func<Task> connect = () => io.Run(async () => await ReactorSocket.ConnectAsync(io.Reactor, new IPEndPoint(IPAddress.Loopback, port)));
        (await connect.Should().ThrowAsync<SocketException>()).Which.SocketErrorCode.Should().Be(SocketError.ConnectionRefused);
        io.Reactor.RegisteredCount.Should().Be(0, "the failed socket is closed and unregistered");
    }

    [Fact]
    public async Task Missing_unix_socket_path_throws_SocketException()
    {
        await using var io = new IoTestContext();
        string path = Path.Combine(Path.GetTempPath(), $"missing-{Guid.NewGuid():N}.sock");
        Func<Task> connect = () => ReactorSocket.ConnectAsync(io.Reactor, new UnixDomainSocketEndPoint(path)).AsTask()
            .WithTimeout("The connect to a missing path", IoTestContext.Timeout);
        await connect.Should().ThrowAsync<SocketException>();
    }

    [Fact]
    public async Task Cancelled_receive_throws_and_socket_stays_usable()
    {
        await using var io = new IoTestContext();
        using ReactorSocket listener = io.Listen();
        await io.RunOnPair(listener, async (client, server) =>
        {
            var buffer = new byte[8];
            using var cts = new CancellationTokenSource();
            ValueTask<int> pending = server.ReceiveAsync(buffer, cts.Token);
            pending.IsCompleted.Should().BeFalse();
            await cts.CancelAsync();
            Func<Task> awaiting = async () => await pending;
            (await awaiting.Should().ThrowAsync<OperationCanceledException>()).Which.CancellationToken.Should().Be(cts.Token);

            // Already-cancelled tokens fail fast too.
            Func<Task> precancelled = async () => await server.ReceiveAsync(buffer, cts.Token);
            await precancelled.Should().ThrowAsync<OperationCanceledException>();

            await client.SendAsync(new byte[] { 5, 6 });
            await IoTestContext.ReceiveExactlyAsync(server, buffer.AsMemory(0, 2));
            buffer[..2].Should().Equal(5, 6);
        });
    }

    [Fact]
    public async Task Cancelled_connect_throws_OperationCanceledException()
    {
        await using var io = new IoTestContext();
        using var cts = new CancellationTokenSource();
        await cts.CancelAsync();
        Func<Task> connect = () => ReactorSocket.ConnectAsync(io.Reactor, new IPEndPoint(IPAddress.Loopback, 1), cts.Token).AsTask()
            .WithTimeout("The connect with a cancelled token", IoTestContext.Timeout);
        await connect.Should().ThrowAsync<OperationCanceledException>();
    }

    [Fact]
    public async Task Cancelled_accept_leaves_listener_usable()
    {
        await using var io = new IoTestContext();
        using ReactorSocket listener = io.Listen();
        await io.Run(async () =>
        {
            using var cts = new CancellationTokenSource();
            ValueTask<ReactorSocket> accept = listener.AcceptAsync(cts.Token);
            await cts.CancelAsync();
            Func<Task> awaiting = async () => await accept;
            await awaiting.Should().ThrowAsync<OperationCanceledException>();
            (ReactorSocket client, ReactorSocket server) = await io.ConnectPairAsync(listener);
            client.Dispose();
            server.Dispose();
        });
    }

    [Fact]
    public async Task Second_concurrent_receive_or_send_is_refused()
    {
        await using var io = new IoTestContext();
        using ReactorSocket listener = io.Listen();
        await io.RunOnPair(listener, async (client, server) =>
        {
            var buffer = new byte[8];
            ValueTask<int> first = server.ReceiveAsync(buffer);
            Func<Task> second = async () => await server.ReceiveAsync(new byte[8]);
            await second.Should().ThrowAsync<InvalidOperationException>();

            // A send that cannot finish: nobody reads the client side, the kernel buffers fill up.
            ValueTask<int> bigSend = server.SendAsync(new byte[64 << 20]);
            bigSend.IsCompleted.Should().BeFalse();
            Func<Task> secondSend = async () => await server.SendAsync(new byte[1]);
            await secondSend.Should().ThrowAsync<InvalidOperationException>();

            await client.SendAsync(new byte[] { 1 });
            (await first).Should().Be(1);
            server.Dispose();
            Func<Task> disposedSend = async () => await bigSend;
            await disposedSend.Should().ThrowAsync<ObjectDisposedException>();
        });
    }

    [Fact]
    public async Task Dispose_fails_pending_and_later_operations_with_ObjectDisposedException()
    {
        await using var io = new IoTestContext();
        using ReactorSocket listener = io.Listen();
        await io.Run(async () =>
        {
            (ReactorSocket client, ReactorSocket server) = await io.ConnectPairAsync(listener);
            using (client)
            {
                ValueTask<int> pending = server.ReceiveAsync(new byte[8]);
                server.Dispose();
                server.Dispose(); // idempotent
                Func<Task> awaitPending = async () => await pending;
                await awaitPending.Should().ThrowAsync<ObjectDisposedException>();
                Func<Task> receive = async () => await server.ReceiveAsync(new byte[8]);
                await receive.Should().ThrowAsync<ObjectDisposedException>();
                Func<Task> send = async () => await server.SendAsync(new byte[8]);
                await send.Should().ThrowAsync<ObjectDisposedException>();
                server.Invoking(s => s.Shutdown(SocketShutdown.Both)).Should().Throw<ObjectDisposedException>();
                server.LocalEndPoint.Should().BeNull();

                // The peer sees the close.
                (await client.ReceiveAsync(new byte[8])).Should().Be(0);
            }

            ValueTask<ReactorSocket> pendingAccept = listener.AcceptAsync();
            listener.Dispose();
            Func<Task> awaitAccept = async () => await pendingAccept;
            await awaitAccept.Should().ThrowAsync<ObjectDisposedException>();
        });
    }

    [Fact]
    public async Task Reactor_dispose_fails_pending_operations_and_refuses_new_sockets()
    {
        var io = new IoTestContext();
        try
        {
            using ReactorSocket listener = io.Listen();
            (ReactorSocket client, ReactorSocket server) = await io.ConnectPairOnSchedulerAsync(listener);
            ValueTask<int> pending = server.ReceiveAsync(new byte[8]);
            ValueTask<ReactorSocket> pendingAccept = listener.AcceptAsync();
            io.Reactor.Dispose();
            Func<Task> awaitPending = () => pending.AsTask().WaitAsync(IoTestContext.Timeout);
            await awaitPending.Should().ThrowAsync<ObjectDisposedException>();
            Func<Task> awaitAccept = () => pendingAccept.AsTask().WaitAsync(IoTestContext.Timeout);
            await awaitAccept.Should().ThrowAsync<ObjectDisposedException>();
            FluentActions.Invoking(() => ReactorSocket.Listen(io.Reactor, IoTestContext.Loopback)).Should().Throw<ObjectDisposedException>();
            Func<Task> connect = () => ReactorSocket.ConnectAsync(io.Reactor, listener.LocalEndPoint ?? IoTestContext.Loopback).AsTask()
                .WithTimeout("The connect through a disposed reactor", IoTestContext.Timeout);
            await connect.Should().ThrowAsync<ObjectDisposedException>();
            client.Dispose();
        }
        finally
        {
            await io.DisposeAsync();
        }
    }

    [Fact]
    public async Task Argument_validation()
    {
        await using var io = new IoTestContext();
        FluentActions.Invoking(() => ReactorSocket.Listen(io.Reactor, IoTestContext.Loopback, backlog: 0)).Should().Throw<ArgumentOutOfRangeException>();
        FluentActions.Invoking(() => ReactorSocket.Listen(null!, IoTestContext.Loopback)).Should().Throw<ArgumentNullException>();
        FluentActions.Invoking(() => ReactorSocket.Listen(io.Reactor, null!)).Should().Throw<ArgumentNullException>();
        FluentActions.Invoking(() => ReactorSocket.Listen(io.Reactor, new DnsEndPoint("localhost", 0))).Should().Throw<ArgumentException>();
        using ReactorSocket listener = io.Listen();
        FluentActions.Invoking(() => ReactorSocket.Listen(io.Reactor, listener.LocalEndPoint!)).Should().Throw<SocketException>()
            .Which.SocketErrorCode.Should().Be(SocketError.AddressAlreadyInUse);
        listener.Invoking(l => l.Shutdown((SocketShutdown)42)).Should().Throw<ArgumentOutOfRangeException>();
        Func<Task> receive = async () => await listener.ReceiveAsync(new byte[1]);
        await receive.Should().ThrowAsync<InvalidOperationException>();
        FluentActions.Invoking(() => ReactorConnection.Create(listener)).Should().Throw<ArgumentException>()
            .WithMessage("A listening socket cannot carry a connection*AcceptAsync*").Which.ParamName.Should().Be("socket");
        FluentActions.Invoking(() => ReactorConnection.Create(null!)).Should().Throw<ArgumentNullException>();
    }

    [Fact]
    public async Task Continuations_resume_on_the_awaiting_worker_not_the_reactor_thread()
    {
        await using var io = new IoTestContext();
        using ReactorSocket listener = io.Listen();
        (ReactorSocket client, ReactorSocket server) = await io.ConnectPairOnSchedulerAsync(listener);
        using (client)
        using (server)
        {
            // The byte is sent once the receive is pending, not after a fixed pause: a loaded run started the receiver
            // more than 50 ms late, found the byte already there, and the receive completed at once.
            var receiving = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            Task<(bool OnWorker, string? Thread)> receiver = io.Run(async () =>
            {
                ValueTask<int> pending = server.ReceiveAsync(new byte[4]);
                pending.IsCompleted.Should().BeFalse();
                receiving.SetResult();
                await pending;
                return (io.Scheduler.IsWorkerThread, Thread.CurrentThread.Name);
            });
            await Task.WhenAny(receiving.Task, receiver).WaitAsync(IoTestContext.Timeout);
            await client.SendAsync(new byte[] { 1 });
            (bool onWorker, string? thread) = await receiver;
            onWorker.Should().BeTrue();
            thread.Should().NotBe("IoReactor");
        }

        // Awaited off the scheduler, the continuation goes to the ThreadPool (never the reactor thread).
        (client, server) = await io.ConnectPairOnSchedulerAsync(listener);
        using (client)
        using (server)
        {
            var receivingOff = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            Task<string?> offScheduler = Task.Run(async () =>
            {
                ValueTask<int> pending = server.ReceiveAsync(new byte[4]);
                receivingOff.SetResult();
                await pending;
                return Thread.CurrentThread.Name;
            });
            await Task.WhenAny(receivingOff.Task, offScheduler).WaitAsync(IoTestContext.Timeout);
            await client.SendAsync(new byte[] { 1 });
            (await offScheduler.WithTimeout("The receive awaited off the scheduler", IoTestContext.Timeout)).Should().NotBe("IoReactor");
        }
    }

    [Fact]
    public async Task Accept_drains_a_burst_of_connections()
    {
        await using var io = new IoTestContext();
        using ReactorSocket listener = io.Listen(backlog: 128);
        var clients = new List<Socket>();
        try
        {
            for (int i = 0; i < 100; i++)
            {
                var c = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
                clients.Add(c);
                await c.ConnectAsync(listener.LocalEndPoint!);
                await c.SendAsync(new[] { (byte)i });
            }

            var seen = new HashSet<byte>();
            await io.Run(async () =>
            {
                for (int i = 0; i < 100; i++)
                {
                    using ReactorSocket accepted = await listener.AcceptAsync();
                    var b = new byte[1];
                    await IoTestContext.ReceiveExactlyAsync(accepted, b);
                    seen.Add(b[0]);
                }
            });
            seen.Should().HaveCount(100);
        }
        finally
        {
            clients.ForEach(c => c.Dispose());
        }
    }

    [Fact]
    public async Task Interop_with_System_Net_Sockets_both_ways()
    {
        await using var io = new IoTestContext();

        // Ours listens, a plain Socket connects.
        using ReactorSocket listener = io.Listen();
        using (Socket plain = IoTestContext.NewPlainSocket())
        {
            using ReactorSocket server = await io.AcceptConnectedAsync(listener, plain);
            byte[] message = IoTestContext.Pattern(300_000, 3);
            Task sending = plain.SendAsync(message);
            byte[] received = new byte[message.Length];
            await io.Run(() => IoTestContext.ReceiveExactlyAsync(server, received));
            await sending;
            received.Should().Equal(message);
            await io.Run(async () => await server.SendAsync(message));
            var back = new byte[message.Length];
            await IoTestContext.ReceiveExactlyAsync(plain, back).WithTimeout("The plain socket's receive of our send", IoTestContext.Timeout);
            back.Should().Equal(message);
        }

        // A plain Socket listens, ours connects.
        using var plainListener = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        plainListener.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        plainListener.Listen();
        Task<Socket> plainAccept = plainListener.AcceptAsync();
        using ReactorSocket client = await io.Run(async () => await ReactorSocket.ConnectAsync(io.Reactor, plainListener.LocalEndPoint!));
        using Socket peer = await plainAccept.WithTimeout("The plain listener's accept of our connect", IoTestContext.Timeout);
        byte[] hello = IoTestContext.Pattern(70_000, 4);
        await io.Run(async () => await client.SendAsync(hello));
        var got = new byte[hello.Length];
        await IoTestContext.ReceiveExactlyAsync(peer, got).WithTimeout("The plain socket's receive of our send", IoTestContext.Timeout);
        got.Should().Equal(hello);
        peer.Shutdown(SocketShutdown.Send);
        (await io.Run(async () => await client.ReceiveAsync(new byte[4]))).Should().Be(0);
    }

    [Fact]
    public async Task Reset_peer_fails_only_its_own_connection()
    {
        await using var io = new IoTestContext();
        using ReactorSocket listener = io.Listen();
        using Socket victimPeer = IoTestContext.NewPlainSocket();
        using ReactorSocket victim = await io.AcceptConnectedAsync(listener, victimPeer);
        (ReactorSocket healthyClient, ReactorSocket healthyServer) = await io.ConnectPairOnSchedulerAsync(listener);
        using (healthyClient)
        using (healthyServer)
        {
            Task<int> pending = io.Run(async () => await victim.ReceiveAsync(new byte[8]));
            victimPeer.LingerState = new LingerOption(true, 0);
            victimPeer.Close(); // RST

            Func<Task> awaiting = () => pending;
            (await awaiting.Should().ThrowAsync<SocketException>()).Which.SocketErrorCode.Should().Be(SocketError.ConnectionReset);
            Func<Task> sendAfterReset = () => io.Run(async () =>
            {
                for (int i = 0; i < 10; i++)
                {
                    await victim.SendAsync(new byte[1024]);
                }
            });
            await sendAfterReset.Should().ThrowAsync<SocketException>();

            await io.Run(async () =>
            {
                await healthyClient.SendAsync(new byte[] { 1, 2, 3 });
                var buffer = new byte[3];
                await IoTestContext.ReceiveExactlyAsync(healthyServer, buffer);
                buffer.Should().Equal(1, 2, 3);
            });
        }
    }

    [Fact]
    public async Task Large_send_completes_with_the_whole_length()
    {
        await using var io = new IoTestContext();
        using ReactorSocket listener = io.Listen();
        await io.RunOnPair(listener, async (client, server) =>
        {
            byte[] message = IoTestContext.Pattern(8 << 20, 5);
            ValueTask<int> send = client.SendAsync(message);
            var received = new byte[message.Length];
            await IoTestContext.ReceiveExactlyAsync(server, received);
            (await send).Should().Be(message.Length);
            received.AsSpan().SequenceEqual(message).Should().BeTrue();
        });
    }

    [Fact]
    public async Task Cancelling_an_in_progress_connect_throws_and_releases_the_socket()
    {
        await using var io = new IoTestContext();
        // A listener that never accepts, with a full backlog: further SYNs are dropped, connects stay in progress.
        using var plain = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        plain.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        plain.Listen(1);
        var connected = new List<ReactorSocket>();
        bool cancelled = false;
        try
        {
            for (int i = 0; i < 16 && !cancelled; i++)
            {
                using var cts = new CancellationTokenSource(TimeSpan.FromMilliseconds(300));
                try
                {
                    connected.Add(await io.Run(async () => await ReactorSocket.ConnectAsync(io.Reactor, plain.LocalEndPoint!, cts.Token)));
                }
                catch (OperationCanceledException e)
                {
                    e.CancellationToken.Should().Be(cts.Token);
                    cancelled = true;
                }
            }

            cancelled.Should().BeTrue("a connect to a listener with a full backlog stays in progress until cancelled");
            io.Reactor.RegisteredCount.Should().Be(connected.Count, "the cancelled socket was closed and unregistered");
        }
        finally
        {
            connected.ForEach(c => c.Dispose());
        }
    }

    [Fact]
    public async Task Awaiting_an_operation_twice_throws_InvalidOperationException()
    {
        await using var io = new IoTestContext();
        using ReactorSocket listener = io.Listen();
        await io.RunOnPair(listener, async (client, server) =>
        {
            ValueTask<int> receive = server.ReceiveAsync(new byte[4]);
            receive.IsCompleted.Should().BeFalse();
            await client.SendAsync(new byte[] { 1 });
            (await receive).Should().Be(1);
            Func<Task> again = async () => await receive;
            await again.Should().ThrowAsync<InvalidOperationException>();

            // The socket is unaffected by the misuse.
            await client.SendAsync(new byte[] { 2 });
            var buffer = new byte[1];
            await IoTestContext.ReceiveExactlyAsync(server, buffer);
            buffer[0].Should().Be(2);
        });
    }

    [Fact]
    public async Task A_gathered_send_over_2_GB_is_refused_before_it_claims_the_send_side()
    {
        // Only a pipe without backpressure (pauseWriterThreshold 0) hands the send loop that much; 3 GB of segments
        // over one 1 MB array stands in for it without the allocation.
        System.Buffers.ReadOnlySequence<byte> huge = ChunkSegment.Sequence(3 * 1024, trimLast: 0);
        huge.Length.Should().BeGreaterThan(int.MaxValue);

        await using var io = new IoTestContext();
        using ReactorSocket listener = io.Listen();
        await io.RunOnPair(listener, async (client, server) =>
        {
            Func<Task> tooLong = async () => await client.SendAsync(huge);
            (await tooLong.Should().ThrowAsync<ArgumentOutOfRangeException>().WithMessage("A send takes at most int.MaxValue bytes*in slices*"))
                .Which.ParamName.Should().Be("buffers");

            // Nothing was sent and the send side is free: the next send goes out.
            (await client.SendAsync(new byte[] { 7 })).Should().Be(1);
            var buffer = new byte[1];
            await IoTestContext.ReceiveExactlyAsync(server, buffer);
            buffer[0].Should().Be(7);
        });
    }

    [Fact]
    public async Task A_gathered_send_of_exactly_int_MaxValue_bytes_is_taken()
    {
        // The largest send that fits the result: 2,048 segments over one 1 MB array, the last one byte short.
        System.Buffers.ReadOnlySequence<byte> largest = ChunkSegment.Sequence(2 * 1024, trimLast: 1);
        largest.Length.Should().Be(int.MaxValue);

        await using var io = new IoTestContext();
        using ReactorSocket listener = io.Listen();
        await io.RunOnPair(listener, async (client, server) =>
        {
            // The peer does not read: the send goes out as far as the kernel's buffers take it and waits, until cancelled.
            using var cancellation = new CancellationTokenSource();
            ValueTask<int> send = client.SendAsync(largest, cancellation.Token);
            send.IsCompleted.Should().BeFalse("the send was taken, not refused, and waits for the peer to read");
            cancellation.Cancel();
            Func<Task> cancelled = async () => await send;
            await cancelled.Should().ThrowAsync<OperationCanceledException>();
            client.UnacknowledgedSendBytes().Should().BePositive("part of the send went out before it waited");
        });
    }

    [Fact]
    public async Task A_TCP_connect_that_waits_for_room_in_the_backlog_completes_on_the_writable_edge()
    {
        // A loopback connect with room is connected by the time its call returns. With the accept queue full (Linux
        // queues backlog + 1), the listener drops the SYN: the connect stays in progress until a retransmission (a
        // second later) finds room, and only the reactor's writable edge then tells the connect operation to finish.
        await using var io = new IoTestContext();
        using ReactorSocket listener = io.Listen(backlog: 1);
        var clients = new List<ReactorSocket>();
        try
        {
            Task<ReactorSocket>? waiting = await io.ConnectUntilOneWaitsAsync(listener.LocalEndPoint!, clients);

            waiting.Should().NotBeNull("a connect to a full accept queue waits");
            using ReactorSocket first = await io.Run(async () => await listener.AcceptAsync());
            using ReactorSocket client = await waiting!.WaitAsync(IoTestContext.Timeout);
            client.RemoteEndPoint.Should().Be(listener.LocalEndPoint);
            await io.Run(async () => await client.SendAsync(new byte[] { 42 }));
        }
        finally
        {
            clients.ForEach(c => c.Dispose());
        }
    }

    private sealed class ChunkSegment : System.Buffers.ReadOnlySequenceSegment<byte>
    {
        public ChunkSegment(byte[] chunk, long runningIndex)
        {
            Memory = chunk;
            RunningIndex = runningIndex;
        }

        public ChunkSegment Append(byte[] chunk)
        {
            var next = new ChunkSegment(chunk, RunningIndex + Memory.Length);
            Next = next;
            return next;
        }

        /// <summary><paramref name="count"/> segments over one 1 MB array, the last one <paramref name="trimLast"/> bytes short.</summary>
        public static System.Buffers.ReadOnlySequence<byte> Sequence(int count, int trimLast)
        {
            var chunk = new byte[1 << 20];
            var first = new ChunkSegment(chunk, 0);
            ChunkSegment last = first;
            for (int i = 1; i < count; i++)
            {
                last = last.Append(chunk);
            }

            return new System.Buffers.ReadOnlySequence<byte>(first, 0, last, chunk.Length - trimLast);
        }
    }
}
