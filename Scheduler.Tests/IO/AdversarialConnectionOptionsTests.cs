using System.Buffers;
using System.Collections.Concurrent;
using System.IO.Pipelines;
using System.Net.Sockets;
using Scheduler.IO;

namespace Scheduler.Tests.IO;

/// <summary>
/// Adversarial <see cref="ReactorConnection"/> scenarios around its options and its lifetime: unusual
/// <see cref="PipeOptions"/> (no backpressure, one-byte thresholds, tiny and huge segments, inline and thread-pool
/// schedulers, a custom pool), DisposeAsync raced with itself and called from pipe continuations, the application
/// completing the pipes in either order, Create on half-shut and Unix domain sockets, and churn. Every wait is bounded.
/// Counts descriptors, so it runs with the other fd-counting IO tests.
/// </summary>
[Collection(nameof(IoStressGroup))]
public sealed class AdversarialConnectionOptionsTests
{
    private static readonly TimeSpan Guard = TimeSpan.FromSeconds(10);

    public static TheoryData<string, string, long, long, int> OptionCases() => new()
    {
        // Not minimumSegmentSize 0: PipeOptions accepts it, but Pipe.WriteAsync of more than a segment then spins
        // forever on empty segments (System.IO.Pipelines itself, reproduced without ReactorConnection).
        { "reactor", "reactor", 0, 0, -1 },            // no backpressure at all
        { "inline", "inline", 1, 1, -1 },              // pause at one byte
        { "inline", "inline", 1, 0, 1 },               // resume only once empty, one-byte segments
        { "threadpool", "threadpool", 4096, 2048, 1 << 20 }, // huge segments
        { "inline", "threadpool", 64 << 10, 32 << 10, 16 },
        { "threadpool", "inline", 3, 2, 7 },
    };

    private static PipeScheduler SchedulerOf(IoTestContext io, string name) => name switch
    {
        "inline" => PipeScheduler.Inline,
        "threadpool" => PipeScheduler.ThreadPool,
        _ => io.Scheduler.PipeScheduler,
    };

    /// <summary>Echo over a connection built with the given options: every byte in order, no user code on the reactor thread.</summary>
    [Theory]
    [MemberData(nameof(OptionCases))]
    public async Task Every_byte_arrives_in_order_under_unusual_PipeOptions_and_no_continuation_runs_on_the_reactor_thread(
        string readerScheduler, string writerScheduler, long pause, long resume, int minimumSegment)
    {
        await using var io = new IoTestContext();
        var options = new PipeOptions(
            readerScheduler: SchedulerOf(io, readerScheduler),
            writerScheduler: SchedulerOf(io, writerScheduler),
            pauseWriterThreshold: pause,
            resumeWriterThreshold: resume,
            minimumSegmentSize: minimumSegment,
            useSynchronizationContext: false);
        var threads = new ConcurrentDictionary<string, int>();
        void Note() => threads.TryAdd(Thread.CurrentThread.Name ?? "(unnamed)", 0);
        using ReactorSocket listener = io.Listen();
        (ReactorSocket peer, ReactorSocket server) = await io.ConnectPairOnSchedulerAsync(listener);
        var echo = ReactorConnection.Create(server, options, options);
        await using var disposeEcho = IoTestContext.DisposeWithin(echo);
        const int Length = 600_000;
        byte[] data = IoTestContext.Pattern(Length, 11);
        using (peer)
        {
            // The server echoes with awaits resuming wherever the pipe's schedulers put them.
            Task serving = Task.Run(async () =>
            {
                while (true)
                {
                    ReadResult result = await echo.Input.ReadAsync();
                    Note();
                    foreach (ReadOnlyMemory<byte> segment in result.Buffer)
                    {
                        await echo.Output.WriteAsync(segment);
                        Note();
                    }

                    echo.Input.AdvanceTo(result.Buffer.End);
                    if (result.IsCompleted)
                    {
                        await echo.Output.CompleteAsync();
                        return;
                    }
                }
            });

            Task sending = io.Run(async () =>
            {
                for (int offset = 0; offset < Length; offset += 7919)
                {
                    await peer.SendAsync(data.AsMemory(offset, Math.Min(7919, Length - offset)));
                }

                peer.Shutdown(SocketShutdown.Send);
            }, Guard);
            var received = new byte[Length];
            await io.Run(() => IoTestContext.ReceiveExactlyAsync(peer, received), Guard);
            await sending;
            (await io.Run(async () => await peer.ReceiveAsync(new byte[16]), Guard)).Should().Be(0, "the echo completed Output: our FIN");
            await serving.WaitAsync(Guard);
            received.AsSpan().SequenceEqual(data).Should().BeTrue("every byte, in order");
        }

        threads.Keys.Should().NotContain("IoReactor", "the reactor thread never runs user code");
    }

    // A send of many segments gathers up to 64 of them into one sendmsg, pinning each for the call. Session 48's Stryker
    // run over ReactorSocket.Operations.cs: with the unpinning loop skipped, every pin stayed (a leak of pinned memory
    // for pools whose blocks pin with a GCHandle) and no test noticed.
    [Fact]
    public async Task A_gathered_send_releases_every_pin_it_took()
    {
        await using var io = new IoTestContext();
        var pool = new CountingMemoryPool(4096);
        var output = new PipeOptions(pool: pool, readerScheduler: io.Scheduler.PipeScheduler, writerScheduler: io.Scheduler.PipeScheduler,
            pauseWriterThreshold: 0, minimumSegmentSize: 4096, useSynchronizationContext: false);
        using ReactorSocket listener = io.Listen();
        (ReactorSocket peer, ReactorSocket server) = await io.ConnectPairOnSchedulerAsync(listener);
        var connection = ReactorConnection.Create(server, outputOptions: output);
        using (peer)
        {
            byte[] data = IoTestContext.Pattern(512 << 10, 6); // 128 blocks in one flush: gathered sends of 64 segments
            await io.Run(async () =>
            {
                await connection.Output.WriteAsync(data);
                var received = new byte[data.Length];
                await IoTestContext.ReceiveExactlyAsync(peer, received);
                received.AsSpan().SequenceEqual(data).Should().BeTrue("every byte, in order");
            }, Guard);

            // The last sendmsg's pins are released right after it returns, which may trail the peer's receive.
            await Scheduling.SchedulerTestHelpers.WaitUntilAsync(() => pool.Unpins == pool.Pins);
            pool.Pins.Should().BeGreaterThanOrEqualTo(64, "the flush went out in gathered sends");
            pool.Unpins.Should().Be(pool.Pins, "each pin is released when its sendmsg returns");
            await connection.Input.CompleteAsync();
            await connection.DisposeAsync().AsTask().WaitAsync(Guard);
        }
    }

    [Theory]
    [InlineData(512)]
    [InlineData(4096)]
    public async Task A_custom_MemoryPool_gets_every_block_back_once_the_application_completed_Input_and_the_connection_is_disposed(int maxBufferSize)
    {
        await using var io = new IoTestContext();
        var pool = new CountingMemoryPool(maxBufferSize);
        var options = new PipeOptions(pool: pool, readerScheduler: io.Scheduler.PipeScheduler, writerScheduler: io.Scheduler.PipeScheduler,
            pauseWriterThreshold: 16 << 10, resumeWriterThreshold: 8 << 10, useSynchronizationContext: false);
        using ReactorSocket listener = io.Listen();
        (ReactorSocket peer, ReactorSocket server) = await io.ConnectPairOnSchedulerAsync(listener);
        var connection = ReactorConnection.Create(server, options, options);
        using (peer)
        {
            byte[] data = IoTestContext.Pattern(200_000, 5);
            await io.Run(async () =>
            {
                Task send = peer.SendAsync(data).AsTask();
                long total = 0;
                while (total < data.Length)
                {
                    ReadResult result = await connection.Input.ReadAsync();
                    total += result.Buffer.Length;
                    foreach (ReadOnlyMemory<byte> segment in result.Buffer)
                    {
                        await connection.Output.WriteAsync(segment);
                    }

                    connection.Input.AdvanceTo(result.Buffer.End);
                }

                await send;
                var back = new byte[data.Length];
                await IoTestContext.ReceiveExactlyAsync(peer, back);
                back.AsSpan().SequenceEqual(data).Should().BeTrue();
                await connection.Input.CompleteAsync();
            }, Guard);
            await connection.DisposeAsync().AsTask().WaitAsync(Guard);
        }

        pool.Rented.Should().BeGreaterThan(0, "the pipes use the pool");
        pool.Outstanding.Should().Be(0, "both pipes are complete on both ends: every block goes back to the pool");
    }

    [Fact]
    public async Task DisposeAsync_raced_with_itself_before_the_pipes_were_touched_ends_with_a_FIN_and_a_disposed_socket()
    {
        await using var io = new IoTestContext();
        using ReactorSocket listener = io.Listen();
        for (int round = 0; round < 20; round++)
        {
            (ReactorConnection connection, ReactorSocket client) = await io.ConnectionPairAsync();
            using (client)
            {
                using var go = new ManualResetEventSlim();
                Task[] disposers = Enumerable.Range(0, 4).Select(_ => Task.Run(async () =>
                {
                    go.Wait();
                    await connection.DisposeAsync();
                })).ToArray();
                go.Set();
                await Task.WhenAll(disposers).WaitAsync(Guard);
                connection.Socket.IsDisposed.Should().BeTrue("every DisposeAsync returned: the socket is closed");
                (await io.Run(async () => await client.ReceiveAsync(new byte[8]), Guard)).Should().Be(0, "an orderly FIN, not a reset");
            }
        }
    }

    [Fact]
    public async Task DisposeAsync_from_inside_inline_pipe_continuations_neither_deadlocks_nor_loses_the_reply()
    {
        await using var io = new IoTestContext();
        var options = new PipeOptions(readerScheduler: PipeScheduler.Inline, writerScheduler: PipeScheduler.Inline,
            pauseWriterThreshold: 1024, resumeWriterThreshold: 512, useSynchronizationContext: false);
        using ReactorSocket listener = io.Listen();
        (ReactorSocket peer, ReactorSocket server) = await io.ConnectPairOnSchedulerAsync(listener);
        var connection = ReactorConnection.Create(server, options, options);
        byte[] reply = IoTestContext.Pattern(100_000, 3);
        using (peer)
        {
            // The read's continuation runs inline inside the receive loop's flush; it writes a reply that waits on
            // backpressure (its continuation then runs inline inside the send loop) and disposes from there.
            Task app = Task.Run(async () =>
            {
                ReadResult result = await connection.Input.ReadAsync();
                connection.Input.AdvanceTo(result.Buffer.End);
                await connection.Output.WriteAsync(reply);
                await connection.DisposeAsync();
            });
            await io.Run(async () => await peer.SendAsync(new byte[] { 1, 2, 3 }), Guard);
            var received = new byte[reply.Length];
            await io.Run(() => IoTestContext.ReceiveExactlyAsync(peer, received), Guard);
            received.AsSpan().SequenceEqual(reply).Should().BeTrue();
            (await io.Run(async () => await peer.ReceiveAsync(new byte[8]), Guard)).Should().Be(0);
            await app.WaitAsync(Guard);
            connection.Socket.IsDisposed.Should().BeTrue();
        }
    }

    [Fact]
    public async Task DisposeAsync_while_the_application_is_blocked_in_FlushAsync_releases_that_flush_and_returns()
    {
        await using var io = new IoTestContext();
        using ReactorSocket listener = io.Listen();
        using Socket peer = IoTestContext.NewPlainSocket();
        peer.ReceiveBufferSize = 64 << 10;
        var connection = ReactorConnection.Create(await io.AcceptConnectedAsync(listener, peer));
        Task<FlushResult> blocked = await io.WriteUntilPaused(connection);
        Task disposing = connection.DisposeAsync().AsTask();
        await disposing.WaitAsync(Guard);
        Task finished = await Task.WhenAny(blocked, Task.Delay(Guard));
        finished.Should().BeSameAs(blocked, "a flush waiting on backpressure is released by DisposeAsync");
        if (blocked.IsCompletedSuccessfully)
        {
            FlushResult result = blocked.Result;
            (result.IsCanceled || result.IsCompleted).Should().BeTrue("the flush could not have drained");
        }

        // The peer sees a closed connection (a reset is allowed here: output was cut short after the grace period).
        peer.ReceiveTimeout = 10_000;
        var sink = new byte[1 << 16];
        try
        {
            while (peer.Receive(sink) > 0)
            {
            }
        }
        catch (SocketException e) when (e.SocketErrorCode == SocketError.ConnectionReset)
        {
        }
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public async Task Completing_Input_and_Output_in_either_order_with_unread_input_and_buffered_output_ends_with_every_byte_and_a_FIN(bool inputFirst)
    {
        await using var io = new IoTestContext();
        var options = new PipeOptions(readerScheduler: io.Scheduler.PipeScheduler, writerScheduler: io.Scheduler.PipeScheduler,
            pauseWriterThreshold: 8192, resumeWriterThreshold: 4096, useSynchronizationContext: false);
        using ReactorSocket listener = io.Listen();
        using Socket peer = IoTestContext.NewPlainSocket();
        peer.ReceiveBufferSize = 64 << 10;
        var connection = ReactorConnection.Create(await io.AcceptConnectedAsync(listener, peer), options, options);
        await using var disposeConnection = IoTestContext.DisposeWithin(connection);

        // Unread input: far more than Input's threshold, most of it left in the socket.
        Task peerSend = peer.SendAsync(new byte[256 << 10]);
        byte[] reply = IoTestContext.Pattern(1 << 20, 9);
        await io.Run(async () =>
        {
            ReadResult first = await connection.Input.ReadAsync();
            connection.Input.AdvanceTo(first.Buffer.Start); // nothing consumed
            ValueTask<FlushResult> write = connection.Output.WriteAsync(reply); // parked: the peer does not read yet
            if (inputFirst)
            {
                await connection.Input.CompleteAsync();
                connection.Output.CancelPendingFlush();
                await write;
                await connection.Output.CompleteAsync();
            }
            else
            {
                connection.Output.CancelPendingFlush();
                await write;
                await connection.Output.CompleteAsync();
                await connection.Input.CompleteAsync();
            }
        }, Guard);

        // The peer now reads: the whole reply, then our FIN; no reset although our side never read its request.
        var received = new byte[reply.Length];
        await IoTestContext.ReceiveExactlyAsync(peer, received).WaitAsync(Guard);
        received.AsSpan().SequenceEqual(reply).Should().BeTrue();
        (await peer.ReceiveAsync(new byte[16].AsMemory()).AsTask().WaitAsync(Guard)).Should().Be(0, "our orderly end of stream");

        // Disposing now drains the peer's request (lingering) so that our close is orderly too.
        Task dispose = connection.DisposeAsync().AsTask();
        await peerSend.WaitAsync(Guard);
        peer.Shutdown(SocketShutdown.Send);
        await dispose.WaitAsync(Guard);
    }

    [Fact]
    public async Task Create_over_a_socket_whose_send_side_is_already_shut_ends_Input_with_the_send_error_once_Output_has_data()
    {
        await using var io = new IoTestContext();
        using ReactorSocket listener = io.Listen();
        (ReactorSocket peer, ReactorSocket server) = await io.ConnectPairOnSchedulerAsync(listener);
        using (peer)
        {
            server.Shutdown(SocketShutdown.Send);
            var connection = ReactorConnection.Create(server);
            await using var disposeConnection = IoTestContext.DisposeWithin(connection);

            // Input still delivers what the peer sends.
            await io.Run(async () =>
            {
                await peer.SendAsync(new byte[] { 42 });
                ReadResult result = await connection.Input.ReadAsync();
                result.Buffer.FirstSpan[0].Should().Be(42);
                connection.Input.AdvanceTo(result.Buffer.End);
                (await peer.ReceiveAsync(new byte[4])).Should().Be(0, "the send side was shut before Create");
            }, Guard);

            // A write cannot go out: the send fails and, as documented, Input ends with that error, not in order.
            await io.Run(async () => await connection.Output.WriteAsync(new byte[] { 1 }), Guard);
            Func<Task> read = () => io.ReadInputToEnd(connection).WaitAsync(Guard);
            (await read.Should().ThrowAsync<SocketException>()).Which.SocketErrorCode.Should().Be(SocketError.Shutdown);
        }
    }

    [Fact]
    public async Task Create_over_a_socket_whose_receive_side_is_already_shut_ends_Input_in_order_and_Output_still_delivers()
    {
        await using var io = new IoTestContext();
        using ReactorSocket listener = io.Listen();
        (ReactorSocket peer, ReactorSocket server) = await io.ConnectPairOnSchedulerAsync(listener);
        using (peer)
        {
            server.Shutdown(SocketShutdown.Receive);
            var connection = ReactorConnection.Create(server);
            await using var disposeConnection = IoTestContext.DisposeWithin(connection);
            await io.ReadInputToEnd(connection).WaitAsync(Guard);
            await io.Run(async () =>
            {
                await connection.Output.WriteAsync(new byte[] { 7, 8, 9 });
                await connection.Output.CompleteAsync();
                var buffer = new byte[3];
                await IoTestContext.ReceiveExactlyAsync(peer, buffer);
                buffer.Should().Equal(7, 8, 9);
                (await peer.ReceiveAsync(new byte[4])).Should().Be(0);
            }, Guard);
        }
    }

    [Fact]
    public async Task An_accepted_Unix_domain_socket_carries_a_connection_with_an_orderly_end_both_ways()
    {
        await using var io = new IoTestContext();
        string path = Path.Combine(Path.GetTempPath(), $"conn-options-{Guid.NewGuid():N}.sock");
        try
        {
            using ReactorSocket listener = io.Listen(new UnixDomainSocketEndPoint(path));
            (ReactorSocket peer, ReactorSocket server) = await io.ConnectPairOnSchedulerAsync(listener);
            var connection = ReactorConnection.Create(server);
            await using var disposeConnection = IoTestContext.DisposeWithin(connection);
            byte[] data = IoTestContext.Pattern(300_000, 21);
            using (peer)
            {
                await io.Run(async () =>
                {
                    Task send = peer.SendAsync(data).AsTask();
                    var back = new byte[data.Length];
                    Task receiving = Task.Run(() => IoTestContext.ReceiveExactlyAsync(peer, back)); // the echo needs a reader
                    var input = new MemoryStream();
                    while (true)
                    {
                        ReadResult result = await connection.Input.ReadAsync();
                        foreach (ReadOnlyMemory<byte> segment in result.Buffer)
                        {
                            input.Write(segment.Span);
                            await connection.Output.WriteAsync(segment);
                        }

                        connection.Input.AdvanceTo(result.Buffer.End);
                        if (input.Length == data.Length)
                        {
                            break;
                        }
                    }

                    await send;
                    peer.Shutdown(SocketShutdown.Send);
                    ReadResult last = await connection.Input.ReadAsync();
                    last.IsCompleted.Should().BeTrue();
                    last.Buffer.IsEmpty.Should().BeTrue();
                    await connection.Output.CompleteAsync();
                    await receiving;
                    back.AsSpan().SequenceEqual(data).Should().BeTrue();
                    (await peer.ReceiveAsync(new byte[4])).Should().Be(0);
                }, Guard);
            }
        }
        finally
        {
            File.Delete(path);
        }
    }

    [Fact]
    public async Task The_same_socket_passed_to_Create_twice_fails_only_the_second_connection_and_hangs_nothing()
    {
        await using var io = new IoTestContext();
        using ReactorSocket listener = io.Listen();
        (ReactorSocket peer, ReactorSocket server) = await io.ConnectPairOnSchedulerAsync(listener);
        using (peer)
        {
            var first = ReactorConnection.Create(server);
            ReactorConnection? second = null;
            try
            {
                // Nothing is promised about a second Create; whatever happens, it must not hang or corrupt the stream
                // silently: either Create refuses, or both connections end within the bound when disposed.
                second = ReactorConnection.Create(server);
            }
            catch (Exception e) when (e is InvalidOperationException or ArgumentException)
            {
            }

            await first.DisposeAsync().AsTask().WaitAsync(Guard);
            if (second is not null)
            {
                await second.DisposeAsync().AsTask().WaitAsync(Guard);
            }

            server.IsDisposed.Should().BeTrue();
        }
    }

    [Fact]
    public async Task Thousands_of_short_connections_disposed_in_random_orders_leak_no_descriptor_registration_or_memory()
    {
        await using var io = new IoTestContext();
        using ReactorSocket listener = io.Listen(backlog: 1024);
        await ChurnAsync(io, listener, 100, seed: 1); // warm up
        GC.Collect();
        GC.WaitForPendingFinalizers();
        GC.Collect();
        long memoryBefore = GC.GetTotalMemory(forceFullCollection: true);
        (int sockets, int epolls) before = ReactorDescriptors.Count();
        int registeredBefore = io.Reactor.RegisteredCount;

        await ChurnAsync(io, listener, 1000, seed: 2);

        GC.Collect();
        GC.WaitForPendingFinalizers();
        GC.Collect();
        long memoryAfter = GC.GetTotalMemory(forceFullCollection: true);
        io.Reactor.RegisteredCount.Should().Be(registeredBefore, "no registration left behind");
        (int sockets, int epolls) after = ReactorDescriptors.Count();
        after.sockets.Should().BeLessThanOrEqualTo(before.sockets + 4, "no socket fd may stay open");
        after.epolls.Should().BeLessThanOrEqualTo(before.epolls);
        (memoryAfter - memoryBefore).Should().BeLessThan(32L << 20, "1000 closed connections must not stay reachable");
    }

    private static Task ChurnAsync(IoTestContext io, ReactorSocket listener, int count, int seed) => io.Run(async () =>
    {
        var random = new Random(seed);
        for (int batch = 0; batch < count / 50; batch++)
        {
            var rounds = new Task[50];
            for (int i = 0; i < rounds.Length; i++)
            {
                (ReactorSocket peer, ReactorSocket server) = await io.ConnectPairAsync(listener);
                var connection = ReactorConnection.Create(server);
                int way = random.Next(4);
                int delay = random.Next(3);
                rounds[i] = OneAsync(connection, peer, way, delay);
            }

            await Task.WhenAll(rounds);
        }
    }, TimeSpan.FromSeconds(60));

    private static async Task OneAsync(ReactorConnection connection, ReactorSocket peer, int way, int delay)
    {
        using (peer)
        {
            await peer.SendAsync(new byte[] { 1, 2, 3 });
            ReadResult result = await connection.Input.ReadAsync();
            connection.Input.AdvanceTo(result.Buffer.End);
            await connection.Output.WriteAsync(new byte[] { 4, 5 });
            switch (way)
            {
                case 0: // the peer closes first
                    peer.Dispose();
                    await Task.Delay(delay);
                    await connection.DisposeAsync();
                    break;
                case 1: // we close first, the peer reads to the end
                    await connection.DisposeAsync();
                    while (await peer.ReceiveAsync(new byte[64]) > 0)
                    {
                    }

                    break;
                case 2: // the application completes both pipes, then disposes while the peer closes
                    await connection.Input.CompleteAsync();
                    await connection.Output.CompleteAsync();
                    Task dispose = connection.DisposeAsync().AsTask();
                    await Task.Delay(delay);
                    peer.Dispose();
                    await dispose;
                    break;
                default: // both at once
                    Task closing = connection.DisposeAsync().AsTask();
                    peer.Shutdown(SocketShutdown.Both);
                    await closing;
                    break;
            }
        }
    }
}
