using System.Buffers;
using System.IO.Pipelines;
using System.Net.Sockets;
using Scheduler.IO;

namespace Scheduler.Tests.IO;

/// <summary>
/// Adversarial scenarios for sockets and connections: resets and aborts while backpressure is engaged, zero-length and
/// very large transfers, cancellation racing completion, and the scheduler disposed mid-transfer. Every wait is bounded
/// (a few seconds) so a hang fails the test instead of the run.
/// </summary>
public sealed class AdversarialConnectionTests
{
    private static readonly TimeSpan Guard = TimeSpan.FromSeconds(10);

    private static PipeOptions Options(IoTestContext io, long pause, long resume) => new(
        readerScheduler: io.Scheduler.PipeScheduler,
        writerScheduler: io.Scheduler.PipeScheduler,
        pauseWriterThreshold: pause,
        resumeWriterThreshold: resume,
        useSynchronizationContext: false);

    /// <summary>Reads Input to its end on the scheduler, bounded by <paramref name="bound"/>; returns the bytes read.</summary>
    private static Task<long> DrainInput(IoTestContext io, ReactorConnection connection, TimeSpan bound) => io.Run(async () =>
    {
        long total = 0;
        while (true)
        {
            ReadResult result = await connection.Input.ReadAsync();
            total += result.Buffer.Length;
            connection.Input.AdvanceTo(result.Buffer.End);
            if (result.IsCompleted)
            {
                return total;
            }
        }
    }, bound);

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    // synchronously: Output.Complete(exception) rather than CompleteAsync (Kills: AbortingWriter.Complete, its
    // AbortIfFirstCompletionFailed removed — the synchronous completion no longer aborted, so Input ended only when the
    // peer, which never reads, drained the parked send).
    public async Task Aborting_Output_while_its_send_is_parked_on_a_peer_that_never_reads_still_ends_Input_with_the_reason(bool synchronously)
    {
        await using var io = new IoTestContext();
        using ReactorSocket listener = io.Listen();
        using Socket peer = IoTestContext.NewPlainSocket();
        peer.ReceiveBufferSize = 64 << 10;
        var connection = ReactorConnection.Create(await io.AcceptConnectedAsync(listener, peer));
        await using var disposeConnection = IoTestContext.DisposeWithin(connection);

        // Backpressure engaged: the peer never reads, the send loop is parked on a full socket, a flush waits.
        Task<FlushResult> blocked = await io.WriteUntilPaused(connection);
        var reason = new InvalidOperationException("application aborted");
        await io.Run(async () =>
        {
            connection.Output.CancelPendingFlush();
            (await blocked).IsCanceled.Should().BeTrue();
            if (synchronously)
            {
                connection.Output.Complete(reason);
            }
            else
            {
                await connection.Output.CompleteAsync(reason);
            }
        }, Guard);

        // docs/io.md: "Completing Output with an exception aborts the connection (both directions shut down). Either
        // way Input then ends with that exception." A stuck peer is exactly when an application aborts.
        // Bounded generously: a peer that never reads nor closes would leave an abort that waited for it pending for good,
        // while a loaded run can hold the abort's few steps off their cores for seconds.
        Func<Task> read = () => DrainInput(io, connection, Guard);
        (await read.Should().ThrowAsync<InvalidOperationException>("the abort must not wait for the peer to read"))
            .Which.Should().BeSameAs(reason);
    }

    [Fact]
    public async Task A_reset_while_Output_is_full_and_Input_is_paused_fails_both_sides_and_spares_another_connection()
    {
        await using var io = new IoTestContext();
        using ReactorSocket listener = io.Listen();
        using Socket peer = IoTestContext.NewPlainSocket();
        peer.ReceiveBufferSize = 64 << 10;
        var victim = ReactorConnection.Create(await io.AcceptConnectedAsync(listener, peer), Options(io, 8192, 4096));
        await using var disposeVictim = IoTestContext.DisposeWithin(victim);

        // Input paused: the peer sends far more than Input's pause threshold and nobody consumes Input.
        Task peerSend = peer.SendAsync(new byte[512 << 10]);
        await io.Run(async () =>
        {
            long buffered = 0;
            while (buffered < 8192)
            {
                ReadResult result = await victim.Input.ReadAsync();
                buffered = result.Buffer.Length;
                victim.Input.AdvanceTo(result.Buffer.Start, result.Buffer.End);
            }
        }, Guard);

        // Output full: the peer never reads.
        Task<FlushResult> blocked = await io.WriteUntilPaused(victim);

        (ReactorSocket client, ReactorSocket server) = await io.ConnectPairOnSchedulerAsync(listener);
        var healthy = ReactorConnection.Create(server);
        await using var disposeHealthy = IoTestContext.DisposeWithin(healthy);
        var healthyClient = ReactorConnection.Create(client);
        await using var disposeHealthyClient = IoTestContext.DisposeWithin(healthyClient);
        Task echo = io.Run(() => ReactorConnectionTests.EchoAsync(healthy), Guard);

        peer.LingerState = new LingerOption(true, 0);
        peer.Close(); // RST
        await peerSend.Ended().WaitAsync(Guard);

        // The waiting writer is released with the reset (or sees the pipe completed).
        try
        {
            (await blocked.WaitAsync(Guard)).IsCompleted.Should().BeTrue();
        }
        catch (SocketException e)
        {
            e.SocketErrorCode.Should().Be(SocketError.ConnectionReset);
        }

        // Input gives up what it holds and then ends with the reset, never as an orderly end.
        Func<Task> read = () => DrainInput(io, victim, Guard);
        (await read.Should().ThrowAsync<SocketException>()).Which.SocketErrorCode.Should().Be(SocketError.ConnectionReset);

        byte[] message = IoTestContext.Pattern(200_000, 31);
        await io.Run(async () =>
        {
            await healthyClient.Output.WriteAsync(message);
            await healthyClient.Output.CompleteAsync();
            (await ReactorConnectionTests.ReadToEndAsync(healthyClient.Input, message.Length)).Should().Equal(message);
        }, Guard);
        await echo;
    }

    [Fact]
    public async Task CancelPendingRead_and_CancelPendingFlush_at_awkward_moments_lose_and_reorder_nothing()
    {
        await using var io = new IoTestContext();
        using ReactorSocket listener = io.Listen();
        (ReactorSocket client, ReactorSocket server) = await io.ConnectPairOnSchedulerAsync(listener);
        var receiver = ReactorConnection.Create(server, Options(io, 16 << 10, 8 << 10), Options(io, 16 << 10, 8 << 10));
        await using var disposeReceiver = IoTestContext.DisposeWithin(receiver);
        var sender = ReactorConnection.Create(client, Options(io, 16 << 10, 8 << 10), Options(io, 16 << 10, 8 << 10));
        await using var disposeSender = IoTestContext.DisposeWithin(sender);

        byte[] message = IoTestContext.Pattern(2 << 20, 32);
        int cancelledReads = 0;
        int cancelledFlushes = 0;
        await io.Run(async () =>
        {
            Task<byte[]> reading = Task.Run(async () =>
            {
                var all = new ArrayBufferWriter<byte>(message.Length);
                var random = new Random(1);
                while (true)
                {
                    ValueTask<ReadResult> pending = receiver.Input.ReadAsync();
                    if (random.Next(4) == 0)
                    {
                        receiver.Input.CancelPendingRead(); // before, during or after the read completes
                    }

                    ReadResult result = await pending;
                    if (result.IsCanceled)
                    {
                        Interlocked.Increment(ref cancelledReads);
                    }

                    foreach (ReadOnlyMemory<byte> segment in result.Buffer)
                    {
                        all.Write(segment.Span);
                    }

                    receiver.Input.AdvanceTo(result.Buffer.End);
                    if (result.IsCompleted)
                    {
                        return all.WrittenSpan.ToArray();
                    }

                    if (random.Next(8) == 0)
                    {
                        await Task.Delay(1); // let backpressure engage on both sides
                    }
                }
            });

            var writeRandom = new Random(2);
            for (int offset = 0; offset < message.Length;)
            {
                int length = Math.Min(writeRandom.Next(1, 40_000), message.Length - offset);
                ValueTask<FlushResult> flush = sender.Output.WriteAsync(message.AsMemory(offset, length));
                offset += length;
                if (!flush.IsCompleted && writeRandom.Next(2) == 0)
                {
                    sender.Output.CancelPendingFlush(); // the bytes are written; only the wait is cancelled
                }

                FlushResult result = await flush;
                if (result.IsCanceled)
                {
                    cancelledFlushes++;
                }

                result.IsCompleted.Should().BeFalse();
            }

            await sender.Output.CompleteAsync();
            byte[] received = await reading;
            received.Length.Should().Be(message.Length);
            received.AsSpan().SequenceEqual(message).Should().BeTrue();
        }, Guard);

        cancelledReads.Should().BePositive();
        cancelledFlushes.Should().BePositive();
    }

    [Fact]
    public async Task Zero_length_sends_and_receives_behave_as_documented_also_at_end_of_stream_and_after_a_reset()
    {
        await using var io = new IoTestContext();
        using ReactorSocket listener = io.Listen();
        await io.RunOnPair(listener, async (client, server) =>
        {
            // An empty send completes at once with 0 and puts nothing on the wire.
            ValueTask<int> empty = client.SendAsync(ReadOnlyMemory<byte>.Empty);
            empty.IsCompletedSuccessfully.Should().BeTrue();
            (await empty).Should().Be(0);

            // An empty receive waits for data without consuming it.
            ValueTask<int> wait = server.ReceiveAsync(Memory<byte>.Empty);
            await Task.Delay(50);
            wait.IsCompleted.Should().BeFalse("nothing was sent yet (the empty send sent nothing)");
            for (int i = 0; i < 100; i++)
            {
                (await client.SendAsync(ReadOnlyMemory<byte>.Empty)).Should().Be(0);
            }

            await client.SendAsync(new byte[] { 7 });
            (await wait.AsTask().WaitAsync(Guard)).Should().Be(0);
            var buffer = new byte[16];
            (await server.ReceiveAsync(buffer)).Should().Be(1);
            buffer[0].Should().Be(7);

            // A cancelled empty receive leaves the socket usable.
            using (var cts = new CancellationTokenSource())
            {
                ValueTask<int> cancelled = server.ReceiveAsync(Memory<byte>.Empty, cts.Token);
                await cts.CancelAsync();
                Func<Task> awaiting = async () => await cancelled;
                await awaiting.Should().ThrowAsync<OperationCanceledException>();
            }

            await client.SendAsync(new byte[] { 8, 9 });
            await IoTestContext.ReceiveExactlyAsync(server, buffer.AsMemory(0, 2));
            buffer.AsSpan(0, 2).ToArray().Should().Equal(8, 9);

            // At the peer's end of stream an empty receive returns 0 at once, and so does a real one.
            client.Shutdown(SocketShutdown.Send);
            (await server.ReceiveAsync(Memory<byte>.Empty).AsTask().WaitAsync(Guard)).Should().Be(0);
            (await server.ReceiveAsync(buffer).AsTask().WaitAsync(Guard)).Should().Be(0);

            // Our send side is still open after the peer's half-close.
            byte[] reply = IoTestContext.Pattern(100_000, 33);
            Task<int> sending = server.SendAsync(reply).AsTask();
            var echoed = new byte[reply.Length];
            await IoTestContext.ReceiveExactlyAsync(client, echoed).WaitAsync(Guard);
            (await sending).Should().Be(reply.Length);
            echoed.Should().Equal(reply);
        }, Guard);

        // An empty receive on a connection the peer reset reports the reset (it never looks like data or an end).
        using Socket peer = IoTestContext.NewPlainSocket();
        using ReactorSocket victim = await io.AcceptConnectedAsync(listener, peer);
        Task<int> parked = io.Run(async () => await victim.ReceiveAsync(Memory<byte>.Empty), Guard);
        await Task.Delay(20);
        peer.LingerState = new LingerOption(true, 0);
        peer.Close();
        Func<Task> afterReset = () => parked;
        (await afterReset.Should().ThrowAsync<SocketException>()).Which.SocketErrorCode.Should().Be(SocketError.ConnectionReset);
    }

    [Fact]
    public async Task Many_tiny_unflushed_writes_then_one_multi_megabyte_write_reach_a_slow_reader_intact()
    {
        await using var io = new IoTestContext();
        using ReactorSocket listener = io.Listen();
        using Socket peer = IoTestContext.NewPlainSocket();
        peer.ReceiveBufferSize = 64 << 10;
        var connection = ReactorConnection.Create(await io.AcceptConnectedAsync(listener, peer));
        await using var disposeConnection = IoTestContext.DisposeWithin(connection);

        const int Tiny = 50_000;
        byte[] big = IoTestContext.Pattern(6 << 20, 34);
        var expected = new byte[Tiny + big.Length];
        for (int i = 0; i < Tiny; i++)
        {
            expected[i] = (byte)(i * 31);
        }

        big.CopyTo(expected, Tiny);

        Task<byte[]> reading = Task.Run(async () =>
        {
            var received = new byte[expected.Length + 1];
            int total = 0;
            int reads = 0;
            int n;
            while ((n = await peer.ReceiveAsync(received.AsMemory(total, Math.Min(32 << 10, received.Length - total)))) > 0)
            {
                total += n;
                if (++reads % 16 == 0)
                {
                    await Task.Delay(1); // a slow reader: the window fills and reopens again and again
                }
            }

            return received.AsSpan(0, total).ToArray();
        });

        await io.Run(async () =>
        {
            for (int i = 0; i < Tiny; i++)
            {
                connection.Output.GetSpan(1)[0] = (byte)(i * 31);
                connection.Output.Advance(1);
            }

            FlushResult result = await connection.Output.WriteAsync(big); // one write far above the pause threshold
            result.IsCompleted.Should().BeFalse();
            await connection.Output.CompleteAsync();
        }, Guard);

        byte[] received = await reading.WaitAsync(Guard);
        received.Length.Should().Be(expected.Length);
        received.AsSpan().SequenceEqual(expected).Should().BeTrue();
    }

    [Fact]
    public async Task Disposing_the_scheduler_mid_transfer_loses_nothing_and_hangs_nothing()
    {
        await using var io = new IoTestContext();
        using ReactorSocket listener = io.Listen();
        (ReactorSocket client, ReactorSocket server) = await io.ConnectPairOnSchedulerAsync(listener);
        var serverConnection = ReactorConnection.Create(server);
        var clientConnection = ReactorConnection.Create(client);
        Task echo = io.Run(() => ReactorConnectionTests.EchoAsync(serverConnection), Guard);
        byte[] message = IoTestContext.Pattern(4 << 20, 35);
        var halfway = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        Task<byte[]> transfer = io.Run(async () =>
        {
            Task<byte[]> reading = ReadWithSignal(clientConnection.Input, message.Length, halfway);
            for (int offset = 0; offset < message.Length; offset += 50_000)
            {
                await clientConnection.Output.WriteAsync(message.AsMemory(offset, Math.Min(50_000, message.Length - offset)));
            }

            await clientConnection.Output.CompleteAsync();
            return await reading;
        }, Guard);

        await halfway.Task.WaitAsync(Guard);
        ValueTask disposing = io.Scheduler.DisposeAsync(); // workers exit once idle; later wake-ups run on the ThreadPool

        byte[] echoed = await transfer;
        echoed.Length.Should().Be(message.Length);
        echoed.AsSpan().SequenceEqual(message).Should().BeTrue();
        await echo;
        await disposing.AsTask().WaitAsync(Guard);
        await serverConnection.DisposeAsync().AsTask().WaitAsync(Guard);
        await clientConnection.DisposeAsync().AsTask().WaitAsync(Guard);

        static async Task<byte[]> ReadWithSignal(PipeReader reader, int expected, TaskCompletionSource halfway)
        {
            var all = new ArrayBufferWriter<byte>(expected);
            while (true)
            {
                ReadResult result = await reader.ReadAsync();
                foreach (ReadOnlyMemory<byte> segment in result.Buffer)
                {
                    all.Write(segment.Span);
                }

                reader.AdvanceTo(result.Buffer.End);
                if (all.WrittenCount >= expected / 4)
                {
                    halfway.TrySetResult();
                }

                if (result.IsCompleted)
                {
                    return all.WrittenSpan.ToArray();
                }
            }
        }
    }

    [Fact]
    public async Task Accepts_cancelled_while_connections_arrive_never_lose_a_connection()
    {
        await using var io = new IoTestContext();
        using ReactorSocket listener = io.Listen();
        await io.Run(async () =>
        {
            var payload = new byte[1];
            for (int i = 0; i < 150; i++)
            {
                using var cts = new CancellationTokenSource();
                ValueTask<ReactorSocket> accept = listener.AcceptAsync(cts.Token);
                Task cancel = Task.Run(() =>
                {
                    Thread.SpinWait(i % 7 * 200);
                    cts.Cancel();
                });
                ReactorSocket connected = await ReactorSocket.ConnectAsync(io.Reactor, listener.LocalEndPoint!);
                ReactorSocket accepted;
                try
                {
                    accepted = await accept;
                }
                catch (OperationCanceledException)
                {
                    // Cancelled before the connection was taken: the next accept must find it (bounded generously: a
                    // lost connection leaves it pending for good, a loaded run only makes it late).
                    using var bound = new CancellationTokenSource(Guard);
                    accepted = await listener.AcceptAsync(bound.Token);
                }

                await cancel;
                using (connected)
                using (accepted)
                {
                    payload[0] = (byte)i;
                    await connected.SendAsync(payload);
                    var received = new byte[1];
                    (await accepted.ReceiveAsync(received)).Should().Be(1);
                    received[0].Should().Be((byte)i, "iteration {0} must accept its own connection, none left behind", i);
                }
            }
        }, Guard);

        io.Reactor.RegisteredCount.Should().Be(1, "only the listener is left registered");
    }

    [Fact]
    public async Task Connects_cancelled_while_they_complete_leak_no_socket_and_leave_the_reactor_serving()
    {
        await using var io = new IoTestContext();
        using ReactorSocket listener = io.Listen();
        using var stopAccepting = new CancellationTokenSource();
        Task accepting = io.Run(async () =>
        {
            try
            {
                while (true)
                {
                    (await listener.AcceptAsync(stopAccepting.Token)).Dispose();
                }
            }
            catch (OperationCanceledException)
            {
            }
        }, Guard);

        int connected = 0;
        int cancelled = 0;
        await io.Run(async () =>
        {
            for (int i = 0; i < 200; i++)
            {
                using var cts = new CancellationTokenSource();
                Task cancel = Task.Run(() =>
                {
                    Thread.SpinWait(i % 5 * 300);
                    cts.Cancel();
                });
                try
                {
                    ReactorSocket socket = await ReactorSocket.ConnectAsync(io.Reactor, listener.LocalEndPoint!, cts.Token);
                    socket.Dispose();
                    connected++;
                }
                catch (OperationCanceledException)
                {
                    cancelled++;
                }

                await cancel;
            }
        }, Guard);

        (connected + cancelled).Should().Be(200);
        await stopAccepting.CancelAsync();
        await accepting;
        io.Reactor.RegisteredCount.Should().Be(1, "every connect, cancelled or not, released its socket");

        // A fresh listener: the old one's backlog still holds connections whose cancelled connects closed them.
        using ReactorSocket fresh = io.Listen();
        await io.RunOnPair(fresh, async (client, server) =>
        {
            await IoTestContext.AssertByteCrossesAsync(client, server, 42);
        }, Guard);
    }

    [Fact]
    public async Task Sends_cancelled_while_they_complete_never_leave_the_send_side_claimed_nor_send_more_than_asked()
    {
        await using var io = new IoTestContext();
        using ReactorSocket listener = io.Listen();
        (ReactorSocket client, ReactorSocket server) = await io.ConnectPairOnSchedulerAsync(listener);
        using (client)
        using (server)
        {
            Task<long> draining = io.Run(async () =>
            {
                var buffer = new byte[64 << 10];
                long total = 0;
                int n;
                while ((n = await server.ReceiveAsync(buffer)) > 0)
                {
                    total += n;
                }

                return total;
            }, Guard);

            long completed = 0;
            long attempted = 0;
            int cancelledCount = 0;
            await io.Run(async () =>
            {
                var chunk = new byte[256 << 10];
                for (int i = 0; i < 150; i++)
                {
                    using var cts = new CancellationTokenSource();
                    Task cancel = Task.Run(() =>
                    {
                        Thread.SpinWait(i % 9 * 500);
                        cts.Cancel();
                    });
                    attempted += chunk.Length;
                    try
                    {
                        completed += await client.SendAsync(chunk, cts.Token);
                    }
                    catch (OperationCanceledException)
                    {
                        cancelledCount++;
                    }

                    await cancel;

                    // Never InvalidOperationException: whoever finished the send released the operation.
                    (await client.SendAsync(new byte[1])).Should().Be(1);
                    completed++;
                    attempted++;
                }

                client.Shutdown(SocketShutdown.Send);
            }, Guard);

            long received = await draining;
            received.Should().BeGreaterThanOrEqualTo(completed).And.BeLessThanOrEqualTo(attempted);
            if (cancelledCount == 0)
            {
                received.Should().Be(completed);
            }
        }
    }

    [Fact]
    public async Task Our_own_send_shutdown_fails_a_parked_send_at_once_and_the_receive_side_keeps_working()
    {
        await using var io = new IoTestContext();
        using ReactorSocket listener = io.Listen();
        await io.RunOnPair(listener, async (client, server) =>
        {
            // The client never reads: the server's big send parks on a full socket.
            ValueTask<int> parked = server.SendAsync(new byte[32 << 20]);
            await Task.Delay(100);
            parked.IsCompleted.Should().BeFalse();

            server.Shutdown(SocketShutdown.Send);
            Func<Task> send = () => parked.AsTask().WaitAsync(Guard);
            (await send.Should().ThrowAsync<SocketException>()).Which.SocketErrorCode.Should().Be(SocketError.Shutdown);

            // The other direction is untouched: the client can still talk to us, and its receive sees our FIN after
            // whatever of the big send made it into the kernel.
            byte[] message = IoTestContext.Pattern(300_000, 36);
            Task<int> clientSend = client.SendAsync(message).AsTask();
            var received = new byte[message.Length];
            await IoTestContext.ReceiveExactlyAsync(server, received).WaitAsync(Guard);
            (await clientSend.WaitAsync(Guard)).Should().Be(message.Length);
            received.Should().Equal(message);

            var sink = new byte[1 << 16];
            while (await client.ReceiveAsync(sink).AsTask().WaitAsync(Guard) > 0)
            {
            }
        }, Guard);
    }

    [Fact]
    public async Task Disposing_the_reactor_under_a_connection_holding_input_fails_both_pipes_with_ObjectDisposedException()
    {
        await using var io = new IoTestContext();
        using ReactorSocket listener = io.Listen();
        (ReactorSocket client, ReactorSocket server) = await io.ConnectPairOnSchedulerAsync(listener);
        var connection = ReactorConnection.Create(server, Options(io, 8192, 4096));
        byte[] message = IoTestContext.Pattern(256 << 10, 37);
        Task<int> clientSend = io.Run(async () => await client.SendAsync(message), Guard);

        // Input paused with bytes in it; nothing is pending on the socket itself besides, maybe, that client send.
        long held = await io.Run(async () =>
        {
            while (true)
            {
                ReadResult result = await connection.Input.ReadAsync();
                if (result.Buffer.Length >= 8192)
                {
                    connection.Input.AdvanceTo(result.Buffer.Start, result.Buffer.End);
                    return result.Buffer.Length;
                }

                connection.Input.AdvanceTo(result.Buffer.Start, result.Buffer.End);
            }
        }, Guard);
        held.Should().BeGreaterThanOrEqualTo(8192);

        io.Reactor.Dispose();
        Func<Task> pendingClientSend = () => clientSend.WaitAsync(Guard);
        await pendingClientSend.Should().NotThrowAsync<TimeoutException>();

        // Input ends with the disposal, never as an orderly end. (System.IO.Pipelines: a writer completed with an
        // exception makes the next ReadAsync throw at once, so bytes the application had examined but not consumed
        // are dropped with the error; whatever was delivered before it is an exact prefix.)
        var delivered = new ArrayBufferWriter<byte>();
        Func<Task> read = () => io.Run(() => ReactorConnectionTests.CopyToEndAsync(connection.Input, delivered), Guard);
        await read.Should().ThrowAsync<ObjectDisposedException>();
        delivered.WrittenSpan.SequenceEqual(message.AsSpan(0, delivered.WrittenCount)).Should().BeTrue();

        // A write after the disposal fails (at the latest on the next flush) instead of vanishing.
        Func<Task> write = () => io.Run(async () =>
        {
            for (int i = 0; i < 100; i++)
            {
                FlushResult flush = await connection.Output.WriteAsync(new byte[1024]);
                if (flush.IsCompleted)
                {
                    throw new InvalidDataException("Output reported completed without an error: the bytes vanished silently");
                }

                await Task.Delay(5);
            }
        }, Guard);
        await write.Should().ThrowAsync<ObjectDisposedException>();

        await connection.DisposeAsync().AsTask().WaitAsync(Guard);
        client.Dispose();
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task Our_own_shutdown_of_both_sides_ends_a_receive_parked_without_a_syscall_and_a_parked_send(bool unixDomain)
    {
        await using var io = new IoTestContext();
        string path = Path.Combine(Path.GetTempPath(), $"adversarial-{Guid.NewGuid():N}.sock");
        try
        {
            using ReactorSocket listener = unixDomain ? io.Listen(new UnixDomainSocketEndPoint(path)) : io.Listen();
            await io.RunOnPair(listener, async (client, server) =>
            {
                // A short read proves the socket drained, so the next receive parks at once without a system call.
                await client.SendAsync(new byte[10]);
                var buffer = new byte[1024];
                (await server.ReceiveAsync(buffer)).Should().Be(10);
                ValueTask<int> receive = server.ReceiveAsync(buffer);
                ValueTask<int> send = server.SendAsync(new byte[32 << 20]); // the client does not read: it parks
                await Task.Delay(50);
                receive.IsCompleted.Should().BeFalse();
                send.IsCompleted.Should().BeFalse();

                server.Shutdown(SocketShutdown.Both);
                (await receive.AsTask().WaitAsync(Guard)).Should().Be(0);
                Func<Task> sending = () => send.AsTask().WaitAsync(Guard);
                (await sending.Should().ThrowAsync<SocketException>()).Which.SocketErrorCode.Should().Be(SocketError.Shutdown);

                // The client reads what made it into the kernel, then our end of stream.
                var sink = new byte[1 << 16];
                while (await client.ReceiveAsync(sink).AsTask().WaitAsync(Guard) > 0)
                {
                }
            }, Guard);
        }
        finally
        {
            File.Delete(path);
        }
    }

    [Fact]
    public async Task A_connection_keeps_echoing_after_its_scheduler_was_disposed_and_every_worker_exited()
    {
        await using var io = new IoTestContext();
        using ReactorSocket listener = io.Listen();
        (ReactorSocket client, ReactorSocket server) = await io.ConnectPairOnSchedulerAsync(listener);
        var connection = ReactorConnection.Create(server);
        Task echo = io.Run(() => ReactorConnectionTests.EchoAsync(connection), Guard);
        await Task.Delay(50); // the echo's read and the receive loop's receive are pending; no work is queued

        await io.Scheduler.DisposeAsync().AsTask().WaitAsync(Guard);

        // Every wake-up from here on runs on the ThreadPool (the scheduler's documented late-arrival path).
        byte[] message = IoTestContext.Pattern(1 << 20, 38);
        Task<int> sending = Task.Run(async () => await client.SendAsync(message));
        var echoed = new byte[message.Length];
        await IoTestContext.ReceiveExactlyAsync(client, echoed).WaitAsync(Guard);
        (await sending.WaitAsync(Guard)).Should().Be(message.Length);
        echoed.AsSpan().SequenceEqual(message).Should().BeTrue();

        client.Shutdown(SocketShutdown.Send);
        await echo;
        (await client.ReceiveAsync(new byte[1]).AsTask().WaitAsync(Guard)).Should().Be(0);
        await connection.DisposeAsync().AsTask().WaitAsync(Guard);
        client.Dispose();
    }

    [Fact]
    public async Task A_peer_that_sent_its_whole_stream_and_closed_ends_Input_in_order_even_when_our_answer_then_fails()
    {
        await using var io = new IoTestContext();
        using ReactorSocket listener = io.Listen();
        using Socket peer = IoTestContext.NewPlainSocket();
        var connection = ReactorConnection.Create(await io.AcceptConnectedAsync(listener, peer), Options(io, 8192, 4096));
        await using var disposeConnection = IoTestContext.DisposeWithin(connection);

        // The peer uploads 64 KiB (it fits in our kernel's receive buffer; Input pauses at 8 KiB) and closes in order:
        // its FIN follows the data, and nothing was left unread on its side.
        byte[] upload = IoTestContext.Pattern(64 << 10, 39);
        await peer.SendAsync(upload).WaitAsync(Guard);
        peer.Close();
        await Task.Delay(100);

        // We answer while Input is still paused: the closed peer answers our bytes with a reset, which Linux reports
        // in CLOSE_WAIT as EPIPE (docs/io.md: EPIPE after the peer's end of stream, "which was complete").
        await io.Run(async () =>
        {
            try
            {
                for (int i = 0; i < 200; i++)
                {
                    FlushResult flush = await connection.Output.WriteAsync(new byte[100]);
                    if (flush.IsCompleted)
                    {
                        return;
                    }

                    await Task.Delay(5);
                }
            }
            catch (SocketException e)
            {
                e.SocketErrorCode.Should().Be(SocketError.Shutdown);
            }
        }, Guard);

        // The peer's stream was complete: docs/io.md, "The peer's shutdown completes Input". It must not end with the
        // answer's EPIPE as if it had been cut short.
        var received = new ArrayBufferWriter<byte>(upload.Length);
        Exception? end = null;
        try
        {
            await io.Run(() => ReactorConnectionTests.CopyToEndAsync(connection.Input, received), Guard);
        }
        catch (SocketException e)
        {
            end = e;
        }

        received.WrittenSpan.SequenceEqual(upload.AsSpan(0, received.WrittenCount)).Should().BeTrue();
        end.Should().BeNull("the peer ended its stream in order after {0} of {1} bytes were delivered", received.WrittenCount, upload.Length);
        received.WrittenCount.Should().Be(upload.Length);
    }

    [Fact]
    public async Task On_a_bare_socket_the_same_complete_stream_ends_with_0_after_the_answer_met_EPIPE()
    {
        // The contrast to the test above: ReactorSocket itself keeps the peer's complete stream an orderly end.
        await using var io = new IoTestContext();
        using ReactorSocket listener = io.Listen();
        using Socket peer = IoTestContext.NewPlainSocket();
        using ReactorSocket ours = await io.AcceptConnectedAsync(listener, peer);
        byte[] upload = IoTestContext.Pattern(64 << 10, 40);
        await peer.SendAsync(upload).WaitAsync(Guard);
        peer.Close();
        await Task.Delay(100);

        await io.Run(async () =>
        {
            Func<Task> answer = async () =>
            {
                for (int i = 0; i < 200; i++)
                {
                    await ours.SendAsync(new byte[100]);
                    await Task.Delay(5);
                }
            };
            (await answer.Should().ThrowAsync<SocketException>()).Which.SocketErrorCode.Should().Be(SocketError.Shutdown);

            var received = new byte[upload.Length];
            await IoTestContext.ReceiveExactlyAsync(ours, received);
            received.Should().Equal(upload);
            (await ours.ReceiveAsync(new byte[16])).Should().Be(0);
        }, Guard);
    }
}
