using System.Buffers;
using System.Collections.Concurrent;
using System.Diagnostics;
using System.IO.Pipelines;
using System.Net;
using System.Net.Security;
using System.Net.Sockets;
using System.Security.Cryptography.X509Certificates;
using Scheduler.IO;
using Scheduler.Tests.Scheduling;

namespace Scheduler.Tests.IO;

/// <summary>
/// Soak and leak hunt: short, intense churn of connections ended every abrupt way (peer resets, half-closes, pipes
/// completed with and without exceptions, DisposeAsync mid-read, mid-write and mid-flush, cancelled and timed-out reads,
/// reactors disposed under live connections), driven by seeded randoms. Afterwards nothing may have leaked (descriptors,
/// registrations, memory, unobserved exceptions) and nothing may have been lost (bystander streams intact, every
/// operation settled, the reactor still serving). Counts the process's descriptors, so it runs in the stress group.
/// </summary>
[Collection(nameof(IoStressGroup))]
public sealed class AdversarialSoakTests
{
    private static readonly TimeSpan Guard = TimeSpan.FromSeconds(10);

    // ---------------------------------------------------------------------------------------------------------------
    // Patterned streams: byte i of stream s is ByteAt(s, i); a lost, duplicated or reordered chunk breaks the pattern.
    // ---------------------------------------------------------------------------------------------------------------
    private static byte ByteAt(int seed, long offset) => (byte)((((offset % 251) * 17) ^ (offset / 251) ^ (seed * 31)) & 0xFF);

    private static void Fill(Span<byte> span, int seed, long offset)
    {
        for (int i = 0; i < span.Length; i++)
        {
            span[i] = ByteAt(seed, offset + i);
        }
    }

    private static long FirstMismatch(ReadOnlySpan<byte> span, int seed, long offset)
    {
        for (int i = 0; i < span.Length; i++)
        {
            if (span[i] != ByteAt(seed, offset + i))
            {
                return offset + i;
            }
        }

        return -1;
    }

    /// <summary>What one side read of a patterned stream: how much, whether every byte matched, and how it ended.</summary>
    private sealed record ReadOutcome(long Count, long Mismatch, Exception? End);

    private static async Task PlainSendPatternAsync(Socket socket, int seed, long length, Random random, CancellationToken token = default)
    {
        var chunk = new byte[64 << 10];
        long sent = 0;
        while (sent < length)
        {
            int n = (int)Math.Min(length - sent, random.Next(1, chunk.Length + 1));
            Fill(chunk.AsSpan(0, n), seed, sent);
            int done = 0;
            while (done < n)
            {
                done += await socket.SendAsync(chunk.AsMemory(done, n - done), SocketFlags.None, token);
            }

            sent += n;
        }
    }

    /// <summary>Reads a plain socket to its end (0 or an error), checking the pattern.</summary>
    private static async Task<ReadOutcome> PlainReadPatternAsync(Socket socket, int seed)
    {
        var buffer = new byte[32 << 10];
        long count = 0;
        long mismatch = -1;
        try
        {
            while (true)
            {
                int n = await socket.ReceiveAsync(buffer, SocketFlags.None);
                if (n == 0)
                {
                    return new ReadOutcome(count, mismatch, null);
                }

                if (mismatch < 0)
                {
                    mismatch = FirstMismatch(buffer.AsSpan(0, n), seed, count);
                }

                count += n;
            }
        }
        catch (SocketException e)
        {
            return new ReadOutcome(count, mismatch, e);
        }
    }

    /// <summary>Reads a pipe to its end, checking the pattern; the end is null (orderly) or what ReadAsync threw.</summary>
    private static async Task<ReadOutcome> PipeReadPatternAsync(PipeReader input, int seed, Func<CancellationToken>? tokens = null)
    {
        long count = 0;
        long mismatch = -1;
        while (true)
        {
            ReadResult result;
            try
            {
                result = await input.ReadAsync(tokens?.Invoke() ?? default);
            }
            catch (OperationCanceledException) when (tokens is not null)
            {
                continue; // a timed-out read consumed nothing
            }
            catch (Exception e)
            {
                return new ReadOutcome(count, mismatch, e);
            }

            foreach (ReadOnlyMemory<byte> segment in result.Buffer)
            {
                if (mismatch < 0)
                {
                    mismatch = FirstMismatch(segment.Span, seed, count);
                }

                count += segment.Length;
            }

            input.AdvanceTo(result.Buffer.End);
            if (result.IsCompleted)
            {
                return new ReadOutcome(count, mismatch, null);
            }
        }
    }

    /// <summary>Writes a patterned stream to a pipe in random chunks, flushing each; stops early when a flush says completed.</summary>
    private static async Task<long> PipeWritePatternAsync(PipeWriter output, int seed, long length, Random random)
    {
        long written = 0;
        while (written < length)
        {
            int n = (int)Math.Min(length - written, random.Next(1, 48 << 10));
            Memory<byte> memory = output.GetMemory(n);
            Fill(memory.Span[..n], seed, written);
            output.Advance(n);
            written += n;
            FlushResult flush = await output.FlushAsync();
            if (flush.IsCompleted)
            {
                break;
            }
        }

        return written;
    }

    private static Socket NewPeer(bool smallReceiveBuffer = false)
    {
        Socket peer = IoTestContext.NewPlainSocket();
        if (smallReceiveBuffer)
        {
            peer.ReceiveBufferSize = 4096;
        }

        return peer;
    }

    private static void Reset(Socket peer)
    {
        try
        {
            peer.LingerState = new LingerOption(true, 0);
        }
        catch (SocketException)
        {
        }
        catch (ObjectDisposedException)
        {
        }

        peer.Dispose();
    }

    /// <summary>System.Net.Sockets opens its own epoll on first use; GC settles the process before a baseline.</summary>
    private static async Task<(int Sockets, int Epolls)> BaselineAsync(IoTestContext io, ReactorSocket listener)
    {
        using (Socket plain = IoTestContext.NewPlainSocket())
        using (ReactorSocket accepted = await io.AcceptConnectedAsync(listener, plain))
        {
        }

        FullCollect();
        return ReactorDescriptors.Count();
    }

    private static void FullCollect()
    {
        GC.Collect();
        GC.WaitForPendingFinalizers();
        GC.Collect();
    }

    /// <summary>
    /// Descriptors close a little after the last system call lets go: wait (bounded generously, as a loaded run holds the
    /// threads that let go off their cores for seconds) for the counts to come back.
    /// </summary>
    private static async Task AssertDescriptorsBackAsync((int Sockets, int Epolls) before, int margin, string when)
    {
        var watch = Stopwatch.StartNew();
        (int Sockets, int Epolls) now = ReactorDescriptors.Count();
        while ((now.Sockets > before.Sockets + margin || now.Epolls > before.Epolls) && watch.Elapsed < IoTestContext.Timeout)
        {
            await Task.Delay(20);
            FullCollect();
            now = ReactorDescriptors.Count();
        }

        now.Sockets.Should().BeLessThanOrEqualTo(before.Sockets + margin, $"no socket descriptor may stay open {when}");
        now.Epolls.Should().BeLessThanOrEqualTo(before.Epolls, $"no epoll instance or eventfd may stay open {when}");
    }

    /// <summary>A fresh connection on the reactor still echoes after the churn.</summary>
    private static async Task AssertStillServesAsync(IoTestContext io, ReactorSocket listener)
    {
        using Socket peer = NewPeer();
        ReactorSocket server = await io.AcceptConnectedAsync(listener, peer);
        var connection = ReactorConnection.Create(server);
        await using var dispose = IoTestContext.DisposeWithin(connection);
        byte[] hello = IoTestContext.Pattern(1000, 5);
        await peer.SendAsync(hello);
        ReadResult read;
        while (true)
        {
            read = await connection.Input.ReadAsync().AsTask().WaitAsync(Guard);
            if (read.Buffer.Length >= hello.Length || read.IsCompleted)
            {
                break;
            }

            connection.Input.AdvanceTo(read.Buffer.Start, read.Buffer.End);
        }

        byte[] got = read.Buffer.Slice(0, Math.Min(read.Buffer.Length, hello.Length)).ToArray();
        connection.Input.AdvanceTo(read.Buffer.End);
        got.Should().Equal(hello);
        await connection.Output.WriteAsync(got).AsTask().WaitAsync(Guard);
        var echo = new byte[hello.Length];
        await IoTestContext.ReceiveExactlyAsync(peer, echo).WaitAsync(Guard);
        echo.Should().Equal(hello);
    }

    /// <summary>Collects unobserved task exceptions that involve the I/O stack while the scope is open.</summary>
    private sealed class UnobservedScope : IDisposable
    {
        private readonly ConcurrentQueue<Exception> _seen = new();

        public UnobservedScope() => TaskScheduler.UnobservedTaskException += OnUnobserved;

        public IReadOnlyCollection<string> Collect()
        {
            for (int i = 0; i < 3; i++)
            {
                FullCollect();
            }

            return _seen.Select(e => e.ToString()).Where(s => s.Contains("Scheduler.IO", StringComparison.Ordinal) || s.Contains("Pipelines", StringComparison.Ordinal)).ToList();
        }

        public void Dispose() => TaskScheduler.UnobservedTaskException -= OnUnobserved;

        private void OnUnobserved(object? sender, UnobservedTaskExceptionEventArgs e) => _seen.Enqueue(e.Exception);
    }

    // ---------------------------------------------------------------------------------------------------------------
    // Churn scenarios: each one connection, server side ours (a ReactorConnection or a bare ReactorSocket), peer a
    // System.Net.Sockets socket (an independent oracle, and the only way to send a reset). Each asserts what the docs
    // promise for its ending, and every wait is bounded.
    // ---------------------------------------------------------------------------------------------------------------
    private const int ScenarioCount = 11;

    private static bool NeedsSmallPeerBuffer(int scenario) => scenario == 4;

    private static async Task RunScenarioAsync(IoTestContext io, int scenario, ReactorSocket server, Socket peer, int seed)
    {
        var random = new Random(seed);
        int up = seed * 2;       // peer → server stream
        int down = (seed * 2) + 1; // server → peer stream
        switch (scenario)
        {
            case 0:
                {
                    // Half-close: the peer sends everything and shuts down its send side; we read it all (an orderly
                    // end), answer, complete Output. Both streams intact, the peer reads our end of stream.
                    var connection = ReactorConnection.Create(server);
                    long upLength = random.Next(1, 256 << 10);
                    long downLength = random.Next(1, 256 << 10);
                    Task<ReadOutcome> peerRead = PlainReadPatternAsync(peer, down);
                    Task<ReadOutcome> read = io.Run(() => PipeReadPatternAsync(connection.Input, up));
                    await PlainSendPatternAsync(peer, up, upLength, random);
                    peer.Shutdown(SocketShutdown.Send);
                    ReadOutcome got = await read.WaitAsync(Guard);
                    got.Should().Be(new ReadOutcome(upLength, -1, null), "the peer's whole stream then its orderly end");
                    long written = await io.Run(() => PipeWritePatternAsync(connection.Output, down, downLength, random));
                    written.Should().Be(downLength);
                    await io.Run(async () => await connection.Output.CompleteAsync());
                    (await peerRead.WaitAsync(Guard)).Should().Be(new ReadOutcome(downLength, -1, null));
                    await connection.DisposeAsync().AsTask().WaitAsync(Guard);
                    break;
                }

            case 1:
                {
                    // Peer reset mid-stream: Input gives a prefix of the stream and ends with the reset.
                    var connection = ReactorConnection.Create(server);
                    Task<ReadOutcome> read = io.Run(() => PipeReadPatternAsync(connection.Input, up));
                    await PlainSendPatternAsync(peer, up, random.Next(1, 512 << 10), random);
                    Reset(peer);
                    ReadOutcome got = await read.WaitAsync(Guard);
                    got.Mismatch.Should().Be(-1);
                    got.End.Should().BeOfType<SocketException>("a reset completes Input with the SocketException")
                        .Which.SocketErrorCode.Should().Be(SocketError.ConnectionReset);
                    await connection.DisposeAsync().AsTask().WaitAsync(Guard);
                    break;
                }

            case 2:
                {
                    // The application rejects the request (Input completed with an exception) and answers while the peer
                    // keeps sending: the whole answer reaches the peer (lingering close), whatever follows it.
                    var connection = ReactorConnection.Create(server);
                    using var stopSending = new CancellationTokenSource();
                    Task peerSend = PlainSendPatternAsync(peer, up, 2 << 20, random, stopSending.Token);
                    Task<ReadOutcome> peerRead = PlainReadPatternAsync(peer, down);
                    long downLength = random.Next(64 << 10, 1 << 20);
                    await io.Run(async () =>
                    {
                        ReadResult first = await connection.Input.ReadAsync();
                        connection.Input.AdvanceTo(first.Buffer.Start); // examined nothing, kept everything
                        await connection.Input.CompleteAsync(new InvalidDataException("malformed request"));
                        long written = await PipeWritePatternAsync(connection.Output, down, downLength, random);
                        written.Should().Be(downLength);
                    });
                    await connection.DisposeAsync().AsTask().WaitAsync(Guard);
                    ReadOutcome got = await peerRead.WaitAsync(Guard);
                    got.Count.Should().Be(downLength, "the whole answer arrives before the close");
                    got.Mismatch.Should().Be(-1);
                    await stopSending.CancelAsync();
                    await peerSend.Ended().WaitAsync(Guard);
                    break;
                }

            case 3:
                {
                    // DisposeAsync while a read is pending on an idle connection: the read ends (no hang, no data), the
                    // peer reads an orderly end.
                    var connection = ReactorConnection.Create(server);
                    Task<ReadResult> pending = io.Run(async () => await connection.Input.ReadAsync());
                    await Task.Delay(random.Next(3));
                    await connection.DisposeAsync().AsTask().WaitAsync(Guard);
                    Exception? failure = await Record(pending);
                    if (failure is null)
                    {
                        ReadResult result = await pending;
                        result.Buffer.Length.Should().Be(0);
                        (result.IsCompleted || result.IsCanceled).Should().BeTrue("a read pending at disposal ends");
                    }

                    (await PlainReadPatternAsync(peer, down).WaitAsync(Guard)).Should().Be(new ReadOutcome(0, -1, null));
                    break;
                }

            case 4:
                {
                    // DisposeAsync while a flush waits on a peer that does not read: the flush is released (completed,
                    // as documented), DisposeAsync returns within its grace period, and what the peer then reads is an
                    // intact prefix of what was written.
                    var connection = ReactorConnection.Create(server);
                    (long written, Task<FlushResult>? pendingFlush) = await io.Run(async () =>
                    {
                        var chunk = new byte[64 << 10];
                        long offset = 0;
                        for (int i = 0; i < 512; i++)
                        {
                            Fill(chunk, down, offset);
                            ValueTask<FlushResult> flush = connection.Output.WriteAsync(chunk);
                            offset += chunk.Length;
                            if (!flush.IsCompleted)
                            {
                                // Paused for good only once it stays pending on a socket the kernel reports full: a
                                // send under way (or held off its core by a loaded run) can still release it.
                                Task<FlushResult> waiting = flush.AsTask();
                                if (await IoTestContext.PausedForGood(waiting, connection.Socket))
                                {
                                    return (offset, (Task<FlushResult>?)waiting);
                                }

                                await waiting;
                                continue;
                            }

                            await flush;
                        }

                        return (offset, (Task<FlushResult>?)null);
                    });
                    pendingFlush.Should().NotBeNull("a peer that does not read pauses the writer");
                    // Timed to the disposal's completion, on the thread that completes it: the test's resumption after
                    // the await waits for a pool or xunit thread, which a loaded run hands out seconds late.
                    (await Timed.UntilCompleted(() => connection.DisposeAsync().AsTask(), Guard))
                        .Should().BeLessThan(TimeSpan.FromSeconds(5), "DisposeAsync never hangs on a peer that stopped reading");
                    FlushResult released = await pendingFlush!.WaitAsync(Guard);
                    released.IsCompleted.Should().BeTrue("a flush already waiting returns FlushResult.IsCompleted");
                    ReadOutcome got = await PlainReadPatternAsync(peer, down).WaitAsync(Guard);
                    got.Mismatch.Should().Be(-1);
                    got.Count.Should().BeLessThanOrEqualTo(written);
                    break;
                }

            case 5:
                {
                    // DisposeAsync while the application holds memory from GetMemory: it flushed a prefix before; after
                    // the disposal its flush is refused with ObjectDisposedException and completing Output returns the
                    // memory. The peer reads an intact prefix that contains everything flushed before the disposal.
                    var connection = ReactorConnection.Create(server);
                    long flushed = random.Next(1, 128 << 10);
                    long total = await io.Run(async () =>
                    {
                        long written = await PipeWritePatternAsync(connection.Output, down, flushed, random);
                        Memory<byte> held = connection.Output.GetMemory(4096);
                        Task dispose = connection.DisposeAsync().AsTask();
                        Fill(held.Span[..4096], down, written);
                        connection.Output.Advance(4096);
                        Func<Task> flush = async () => await connection.Output.FlushAsync();
                        await flush.Should().ThrowAsync<ObjectDisposedException>();
                        await connection.Output.CompleteAsync();
                        await dispose.WaitAsync(Guard);
                        return written + 4096;
                    });
                    ReadOutcome got = await PlainReadPatternAsync(peer, down).WaitAsync(Guard);
                    got.Mismatch.Should().Be(-1);
                    got.Count.Should().BeInRange(flushed, total);
                    break;
                }

            case 6:
                {
                    // Reads cancelled again and again (CancelPendingRead from another task, and timeouts on the reactor's
                    // wheel) while the peer streams: every byte arrives once, in order, then the orderly end.
                    var connection = ReactorConnection.Create(server);
                    long upLength = random.Next(1, 1 << 20);
                    using var stop = new CancellationTokenSource();
                    Task canceller = io.Run(async () =>
                    {
                        var r = new Random(seed + 7);
                        while (!stop.IsCancellationRequested)
                        {
                            connection.Input.CancelPendingRead();
                            await Task.Delay(r.Next(0, 2));
                        }
                    }, TimeSpan.FromSeconds(30));
                    var timeouts = new List<CancellationTokenSource>();
                    Func<CancellationToken> token = () =>
                    {
                        var cts = new CancellationTokenSource(TimeSpan.FromMilliseconds(random.Next(1, 4)), io.Reactor.Timers);
                        lock (timeouts)
                        {
                            timeouts.Add(cts);
                        }

                        return cts.Token;
                    };
                    Task<ReadOutcome> read = io.Run(() => PipeReadPatternAsync(connection.Input, up, token));
                    await PlainSendPatternAsync(peer, up, upLength, random);
                    peer.Shutdown(SocketShutdown.Send);
                    ReadOutcome got = await read.WaitAsync(Guard);
                    await stop.CancelAsync();
                    await canceller.WaitAsync(Guard);
                    got.Should().Be(new ReadOutcome(upLength, -1, null));
                    await connection.DisposeAsync().AsTask().WaitAsync(Guard);
                    (await PlainReadPatternAsync(peer, down).WaitAsync(Guard)).Should().Be(new ReadOutcome(0, -1, null));
                    timeouts.ForEach(t => t.Dispose());
                    break;
                }

            case 7:
                {
                    // Output completed with an exception once the peer's request is in: Input ends with that very
                    // exception (never as an orderly end), and the peer sees our end of stream. (A peer still sending at
                    // that moment is the separate test below: the kernel then resets, and Input reports the reset.)
                    var connection = ReactorConnection.Create(server);
                    using var stopSending = new CancellationTokenSource();
                    long upLength = random.Next(1, 256 << 10);
                    Task peerSend = PlainSendPatternAsync(peer, up, upLength, random, stopSending.Token);
                    var reason = new InvalidOperationException("application abort");
                    ReadOutcome got = await io.Run(async () =>
                    {
                        await peerSend.WaitAsync(Guard);
                        while (true)
                        {
                            ReadResult all = await connection.Input.ReadAsync();
                            connection.Input.AdvanceTo(all.Buffer.Start, all.Buffer.End);
                            if (all.Buffer.Length >= upLength)
                            {
                                break;
                            }
                        }

                        await connection.Output.CompleteAsync(reason);
                        return await PipeReadPatternAsync(connection.Input, up);
                    });
                    got.Mismatch.Should().Be(-1);
                    got.End.Should().BeSameAs(reason, "Input ends with the exception Output was completed with");
                    ReadOutcome peerGot = await PlainReadPatternAsync(peer, down).WaitAsync(Guard);
                    peerGot.Count.Should().Be(0);
                    await stopSending.CancelAsync();
                    await connection.DisposeAsync().AsTask().WaitAsync(Guard);
                    await peerSend.Ended().WaitAsync(Guard);
                    break;
                }

            case 8:
                {
                    // A bare socket whose receives time out on the reactor's wheel while the peer trickles data: a
                    // timed-out receive consumed nothing, so the stream is intact; then we answer and close in order.
                    long upLength = random.Next(1, 64 << 10);
                    Task peerSend = Task.Run(async () =>
                    {
                        var r = new Random(seed + 3);
                        var chunk = new byte[4096];
                        long sent = 0;
                        while (sent < upLength)
                        {
                            int n = (int)Math.Min(upLength - sent, r.Next(1, chunk.Length));
                            Fill(chunk.AsSpan(0, n), up, sent);
                            await peer.SendAsync(chunk.AsMemory(0, n), SocketFlags.None);
                            sent += n;
                            if (r.Next(4) == 0)
                            {
                                await Task.Delay(r.Next(1, 3));
                            }
                        }

                        peer.Shutdown(SocketShutdown.Send);
                    });
                    Task<ReadOutcome> peerRead = PlainReadPatternAsync(peer, down);
                    ReadOutcome got = await io.Run(async () =>
                    {
                        var buffer = new byte[8192];
                        long count = 0;
                        long mismatch = -1;
                        while (true)
                        {
                            using var timeout = new CancellationTokenSource(TimeSpan.FromMilliseconds(random.Next(1, 3)), io.Reactor.Timers);
                            int n;
                            try
                            {
                                n = await server.ReceiveAsync(buffer, timeout.Token);
                            }
                            catch (OperationCanceledException)
                            {
                                continue;
                            }

                            if (n == 0)
                            {
                                return new ReadOutcome(count, mismatch, null);
                            }

                            if (mismatch < 0)
                            {
                                mismatch = FirstMismatch(buffer.AsSpan(0, n), up, count);
                            }

                            count += n;
                        }
                    });
                    await peerSend.WaitAsync(Guard);
                    got.Should().Be(new ReadOutcome(upLength, -1, null));
                    var reply = new byte[random.Next(1, 64 << 10)];
                    Fill(reply, down, 0);
                    await io.Run(async () =>
                    {
                        (await server.SendAsync(reply)).Should().Be(reply.Length);
                        server.Shutdown(SocketShutdown.Send);
                    });
                    (await peerRead.WaitAsync(Guard)).Should().Be(new ReadOutcome(reply.Length, -1, null));
                    server.Dispose();
                    break;
                }

            case 9:
                {
                    // Our own half-close first: Output completed in order, the peer reads our whole answer and its end,
                    // then streams its request and half-closes; Input still delivers every byte and an orderly end.
                    var connection = ReactorConnection.Create(server);
                    long downLength = random.Next(1, 128 << 10);
                    long upLength = random.Next(1, 512 << 10);
                    Task<ReadOutcome> peerRead = PlainReadPatternAsync(peer, down);
                    await io.Run(async () =>
                    {
                        (await PipeWritePatternAsync(connection.Output, down, downLength, random)).Should().Be(downLength);
                        await connection.Output.CompleteAsync();
                    });
                    (await peerRead.WaitAsync(Guard)).Should().Be(new ReadOutcome(downLength, -1, null));
                    Task<ReadOutcome> read = io.Run(() => PipeReadPatternAsync(connection.Input, up));
                    await PlainSendPatternAsync(peer, up, upLength, random);
                    peer.Shutdown(SocketShutdown.Send);
                    (await read.WaitAsync(Guard)).Should().Be(new ReadOutcome(upLength, -1, null));
                    await connection.DisposeAsync().AsTask().WaitAsync(Guard);
                    break;
                }

            default:
                {
                    // The peer half-closes, then resets while we still stream to it: Input ends in order first, then our
                    // writes fail (or are told the reader completed) instead of hanging; DisposeAsync from three tasks
                    // at once returns.
                    var connection = ReactorConnection.Create(server);
                    Task<ReadOutcome> ours = io.Run(() => PipeReadPatternAsync(connection.Input, up));
                    Task<Exception?> writer = io.Run(async () =>
                    {
                        try
                        {
                            await PipeWritePatternAsync(connection.Output, down, 64L << 20, random);
                            return null;
                        }
                        catch (Exception e)
                        {
                            return e;
                        }
                    }, TimeSpan.FromSeconds(30));
                    var buffer = new byte[random.Next(1, 64 << 10)];
                    int first = await peer.ReceiveAsync(buffer, SocketFlags.None).WaitAsync(Guard);
                    FirstMismatch(buffer.AsSpan(0, first), down, 0).Should().Be(-1);
                    peer.Shutdown(SocketShutdown.Send);
                    (await ours.WaitAsync(Guard)).Should().Be(new ReadOutcome(0, -1, null), "the peer's half-close is an orderly end");
                    Reset(peer);
                    Exception? writeEnd = await writer.WaitAsync(Guard);
                    if (writeEnd is not null)
                    {
                        writeEnd.Should().BeOfType<SocketException>();
                    }

                    await Task.WhenAll(
                        connection.DisposeAsync().AsTask(),
                        Task.Run(async () => await connection.DisposeAsync()),
                        io.Run(async () => await connection.DisposeAsync())).WaitAsync(Guard);
                    break;
                }
        }
    }

    private static Task<Exception?> Record(Task task) => task.ExceptionWithin(Guard);

    /// <summary>
    /// Two healthy connections streaming both ways for the whole churn (a plain peer echoed through a ReactorConnection,
    /// and two ReactorConnections talking to each other): every byte must arrive once, in order, and end in order.
    /// </summary>
    private static async Task BystandersAsync(IoTestContext io, ReactorSocket listener, Task churnDone, TaskCompletionSource connected)
    {
        using Socket plain = NewPeer();
        ReactorSocket echoSocket = await io.AcceptConnectedAsync(listener, plain);
        var echo = ReactorConnection.Create(echoSocket);
        await using var disposeEcho = IoTestContext.DisposeWithin(echo);
        Task echoLoop = io.Run(async () =>
        {
            while (true)
            {
                ReadResult read = await echo.Input.ReadAsync();
                foreach (ReadOnlyMemory<byte> segment in read.Buffer)
                {
                    await echo.Output.WriteAsync(segment);
                }

                echo.Input.AdvanceTo(read.Buffer.End);
                if (read.IsCompleted)
                {
                    await echo.Output.CompleteAsync();
                    return;
                }
            }
        }, TimeSpan.FromSeconds(60));
        Task<ReadOutcome> echoed = PlainReadPatternAsync(plain, 901);
        Task<long> plainSender = Task.Run(async () =>
        {
            var chunk = new byte[16 << 10];
            long sent = 0;
            var random = new Random(77);
            while (!churnDone.IsCompleted || sent < (1 << 20))
            {
                int n = random.Next(1, chunk.Length + 1);
                Fill(chunk.AsSpan(0, n), 901, sent);
                int done = 0;
                while (done < n)
                {
                    done += await plain.SendAsync(chunk.AsMemory(done, n - done), SocketFlags.None);
                }

                sent += n;
                if (random.Next(8) == 0)
                {
                    await Task.Delay(1);
                }
            }

            plain.Shutdown(SocketShutdown.Send);
            return sent;
        });

        // Two: both ends ours, over the same reactor.
        (ReactorSocket a, ReactorSocket b) = await io.ConnectPairOnSchedulerAsync(listener);
        var left = ReactorConnection.Create(a);
        var right = ReactorConnection.Create(b);
        await using var disposeLeft = IoTestContext.DisposeWithin(left);
        await using var disposeRight = IoTestContext.DisposeWithin(right);
        Task<long> leftWriter = io.Run(async () =>
        {
            long sent = 0;
            var random = new Random(78);
            while (!churnDone.IsCompleted || sent < (1 << 20))
            {
                int n = random.Next(1, 32 << 10);
                Memory<byte> memory = left.Output.GetMemory(n);
                Fill(memory.Span[..n], 902, sent);
                left.Output.Advance(n);
                sent += n;
                (await left.Output.FlushAsync()).IsCompleted.Should().BeFalse();
            }

            await left.Output.CompleteAsync();
            return sent;
        }, TimeSpan.FromSeconds(60));
        Task<ReadOutcome> rightRead = io.Run(() => PipeReadPatternAsync(right.Input, 902), TimeSpan.FromSeconds(60));
        connected.TrySetResult();

        long plainSent = await plainSender.WaitAsync(TimeSpan.FromSeconds(60));
        (await echoed.WaitAsync(TimeSpan.FromSeconds(60))).Should().Be(new ReadOutcome(plainSent, -1, null), "the echo bystander's stream");
        await echoLoop;
        long leftSent = await leftWriter;
        (await rightRead).Should().Be(new ReadOutcome(leftSent, -1, null), "the pipe-to-pipe bystander's stream");
    }

    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(3)]
    public async Task Seeded_churn_of_abruptly_ended_connections_leaks_nothing_and_loses_no_bystander_byte(int seed)
    {
        using var unobserved = new UnobservedScope();
        await using var io = new IoTestContext();
        using ReactorSocket listener = io.Listen(backlog: 1024);
        (int Sockets, int Epolls) before = await BaselineAsync(io, listener);
        int registeredBefore = io.Reactor.RegisteredCount;

        var churnDone = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var connected = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        Task bystanders = BystandersAsync(io, listener, churnDone.Task, connected);
        await Task.WhenAny(connected.Task, bystanders).WaitAsync(Guard); // the listener takes one accept at a time
        var random = new Random(seed);
        var failures = new ConcurrentQueue<string>();
        try
        {
            for (int wave = 0; wave < 3; wave++)
            {
                var scenarios = new List<Task>();
                for (int i = 0; i < 16; i++)
                {
                    int scenario = random.Next(ScenarioCount);
                    int scenarioSeed = (seed * 10_000) + (wave * 100) + i;
                    Socket peer = NewPeer(NeedsSmallPeerBuffer(scenario));
                    ReactorSocket server = await io.AcceptConnectedAsync(listener, peer);
                    scenarios.Add(Task.Run(async () =>
                    {
                        try
                        {
                            await RunScenarioAsync(io, scenario, server, peer, scenarioSeed).WaitAsync(TimeSpan.FromSeconds(15));
                        }
                        catch (Exception e)
                        {
                            failures.Enqueue($"scenario {scenario} (seed {scenarioSeed}): {e}");
                            server.Dispose();
                        }
                        finally
                        {
                            peer.Dispose();
                        }
                    }));
                }

                await Task.WhenAll(scenarios).WaitAsync(TimeSpan.FromSeconds(30));
            }
        }
        finally
        {
            churnDone.TrySetResult();
        }

        failures.Should().BeEmpty();
        await bystanders.WaitAsync(TimeSpan.FromSeconds(60));
        await AssertStillServesAsync(io, listener);

        io.Reactor.RegisteredCount.Should().Be(registeredBefore, "every socket of the churn is unregistered");
        await AssertDescriptorsBackAsync(before, margin: 2, "after the churn");
        unobserved.Collect().Should().BeEmpty("no I/O task may fault unobserved");
    }

    [Fact]
    public async Task Aborting_Output_while_the_peer_is_still_sending_ends_Input_with_the_applications_exception_not_a_reset()
    {
        const int seed = 1;
        // docs/io.md: "Completing Output with an exception aborts the connection (both directions shut down) at once ...
        // Either way Input then ends with that exception (the application's own, ...)". The abort shuts the receive
        // side down; a segment the peer sends after that makes Linux reset the connection (data for a socket whose
        // receive side is shut, tcp_rcv_state_process), and a receive loop that was paused by backpressure at the abort
        // reads that ECONNRESET, which the abort itself provoked, instead of the recorded reason: the application is
        // told that the peer reset the connection.
        await using var io = new IoTestContext();
        using ReactorSocket listener = io.Listen();
        using Socket peer = NewPeer();
        ReactorSocket server = await io.AcceptConnectedAsync(listener, peer);
        var connection = ReactorConnection.Create(server);
        await using var dispose = IoTestContext.DisposeWithin(connection);

        // More than Input's pause threshold (64 KiB) and less than the kernel's receive buffer: the receive loop pauses
        // at the flush with the TCP window still open.
        long request = 100 << 10;
        await PlainSendPatternAsync(peer, seed, request, new Random(seed));
        var reason = new InvalidDataException("the application rejects this peer");
        await io.Run(async () =>
        {
            ReadResult first = await connection.Input.ReadAsync();
            connection.Input.AdvanceTo(first.Buffer.Start); // examined nothing: Input stays over its threshold
            await Task.Delay(50);
            await connection.Output.CompleteAsync(reason);
        });

        // The peer sees our FIN (the orderly end the docs promise), then sends a little more, as a peer that has not
        // read yet does.
        (await PlainReadPatternAsync(peer, seed + 1).WaitAsync(Guard)).Count.Should().Be(0);
        await peer.SendAsync(new byte[1024], SocketFlags.None).WaitAsync(Guard);
        await Task.Delay(50);

        ReadOutcome got = await io.Run(() => PipeReadPatternAsync(connection.Input, seed));
        got.Mismatch.Should().Be(-1);
        got.End.Should().BeSameAs(reason, "Input ends with the exception Output was completed with, not a reset our own abort provoked");
    }

    [Theory]
    [InlineData(11)]
    [InlineData(12)]
    public async Task A_reactor_disposed_under_connections_in_every_state_settles_everything_and_closes_every_descriptor(int seed)
    {
        // IoReactor.Dispose: "pending operations fail with ObjectDisposedException"; DisposeAsync "never hangs"; every
        // socket registered is closed. Here the connections are caught in every state at once: a pending pipe read,
        // a flush held by backpressure, a DisposeAsync lingering on a peer that does not read, memory held from
        // GetMemory, unread input, bare receives with timeouts, a parked send, a pending accept, a Unix domain connect
        // waiting for backlog room, a wheel delay, and a TLS handshake waiting for its client.
        using var unobserved = new UnobservedScope();
        (int Sockets, int Epolls) before;
        await using (var warm = new IoTestContext())
        using (ReactorSocket warmListener = warm.Listen())
        {
            before = await BaselineAsync(warm, warmListener);
        }

        before = ReactorDescriptors.Count();
        var random = new Random(seed);
        string unixPath = Path.Combine(Path.GetTempPath(), $"soak-{Guid.NewGuid():N}.sock");
        var io = new IoTestContext();
        var peers = new List<Socket>();
        var settled = new List<(string What, Task Task)>();
        var connections = new List<ReactorConnection>();
        var held = new List<(ReactorConnection Connection, Memory<byte> Memory)>();
        var unreads = new List<ReactorConnection>();
        try
        {
            ReactorSocket listener = io.Listen(backlog: 1024);
            async Task<ReactorConnection> NewConnectionAsync(bool smallPeerBuffer = false)
            {
                Socket peer = NewPeer(smallPeerBuffer);
                peers.Add(peer);
                var connection = ReactorConnection.Create(await io.AcceptConnectedAsync(listener, peer));
                connections.Add(connection);
                return connection;
            }

            for (int round = 0; round < 2; round++)
            {
                // A pipe read pending on an idle connection.
                ReactorConnection idle = await NewConnectionAsync();
                settled.Add(("pending pipe read", io.Run(async () => await idle.Input.ReadAsync())));

                // A flush held by a peer that does not read.
                ReactorConnection full = await NewConnectionAsync(smallPeerBuffer: true);
                Task<FlushResult> paused = await io.WriteUntilPaused(full);
                settled.Add(("paused flush", paused));

                // A DisposeAsync lingering on a peer that does not read (its output cannot drain).
                ReactorConnection lingering = await NewConnectionAsync(smallPeerBuffer: true);
                Task<FlushResult> lingeringFlush = await io.WriteUntilPaused(lingering);
                settled.Add(("flush under a lingering DisposeAsync", lingeringFlush));
                settled.Add(("lingering DisposeAsync", io.Run(async () => await lingering.DisposeAsync())));

                // Memory held from GetMemory.
                ReactorConnection holding = await NewConnectionAsync();
                held.Add((holding, holding.Output.GetMemory(1024)));

                // Unread input: the application has not read what the peer sent.
                ReactorConnection unread = await NewConnectionAsync();
                await PlainSendPatternAsync(peers[^1], seed, random.Next(1, 200 << 10), random);
                unreads.Add(unread);

                // Bare sockets: a receive with a long timeout on the wheel, and a send parked on a peer that does not read.
                Socket barePeer = NewPeer(smallReceiveBuffer: true);
                peers.Add(barePeer);
                ReactorSocket bare = await io.AcceptConnectedAsync(listener, barePeer);
                var timeout = new CancellationTokenSource(TimeSpan.FromMinutes(1), io.Reactor.Timers);
                settled.Add(("timed bare receive", io.Run(async () => await bare.ReceiveAsync(new byte[64], timeout.Token))));
                var big = new byte[32 << 20];
                settled.Add(("parked bare send", io.Run(async () => await bare.SendAsync(big))));

                // A wheel delay.
                settled.Add(("wheel delay", io.Reactor.Timers.DelayAsync(TimeSpan.FromMinutes(1)).AsTask()));

                // A TLS handshake waiting for a client that connected and says nothing.
                ReactorConnection tls = await NewConnectionAsync();
                var ssl = new SslStream(new DuplexPipeStream(tls));
                X509Certificate2 certificate = TestCertificates.CreateSelfSignedServer();
                settled.Add(("TLS handshake", io.Run(() => ssl.AuthenticateAsServerAsync(certificate))));
            }

            // A second listener with an accept pending, and a Unix domain connect waiting for backlog room.
            ReactorSocket accepting = io.Listen();
            settled.Add(("pending accept", io.Run(async () => await accepting.AcceptAsync())));
            ReactorSocket unixListener = io.Listen(new UnixDomainSocketEndPoint(unixPath), backlog: 1);
            Task<ReactorSocket>? waitingConnect = null;
            for (int i = 0; i < 8 && waitingConnect is null; i++)
            {
                // The call's own result tells which connect waits (IoTestContext.StartConnect), not a window of real time.
                (bool pending, Task<ReactorSocket> connect) = await io.StartConnect(new UnixDomainSocketEndPoint(unixPath));
                if (pending)
                {
                    waitingConnect = connect;
                }
            }

            if (waitingConnect is not null)
            {
                settled.Add(("unix connect waiting for backlog room", waitingConnect));
            }

            await Task.Delay(random.Next(0, 30));
            await Task.Factory.StartNew(io.Reactor.Dispose, CancellationToken.None, TaskCreationOptions.LongRunning, TaskScheduler.Default)
                .WaitAsync(Guard);

            // Everything pending settles, each with an outcome the docs allow.
            foreach ((string what, Task task) in settled)
            {
                Exception? failure = await Record(task).WaitAsync(Guard);
                if (what is "lingering DisposeAsync")
                {
                    failure.Should().BeNull(what);
                }
                else if (what is "paused flush" or "flush under a lingering DisposeAsync")
                {
                    // Released: completed, or failed by the reader's ObjectDisposedException.
                    (failure is null or ObjectDisposedException).Should().BeTrue($"{what}: {failure}");
                }
                else if (what is "pending pipe read" or "timed bare receive" or "parked bare send" or "pending accept" or "wheel delay" or "unix connect waiting for backlog room")
                {
                    failure.Should().BeOfType<ObjectDisposedException>(what);
                }
                else
                {
                    failure.Should().NotBeNull($"{what} cannot succeed without its peer");
                }
            }

            // Unread input is still delivered intact, then the end reports the disposal.
            foreach (ReactorConnection connection in unreads)
            {
                ReadOutcome got = await io.Run(() => PipeReadPatternAsync(connection.Input, seed));
                got.Mismatch.Should().Be(-1);
                got.End.Should().BeOfType<ObjectDisposedException>("the reactor's disposal ended the receive loop");
            }

            foreach ((ReactorConnection connection, Memory<byte> memory) in held)
            {
                connection.Output.Advance(memory.Length);
                Func<Task> flush = async () => await connection.Output.FlushAsync();
                await flush.Should().NotThrowAsync<InvalidOperationException>();
                await connection.Output.CompleteAsync();
            }

            // Every connection's DisposeAsync returns promptly, and every peer sees its socket closed.
            // Timed to the last disposal's completion, on the thread that completes it: the test's resumption after the
            // await waits for a pool or xunit thread, which a loaded run hands out seconds late.
            (await Timed.UntilCompleted(() => Task.WhenAll(connections.Select(c => c.DisposeAsync().AsTask())), Guard))
                .Should().BeLessThan(TimeSpan.FromSeconds(5), "the reactor already closed every socket");
            foreach (Socket peer in peers)
            {
                var buffer = new byte[64 << 10];
                Func<Task> drain = async () =>
                {
                    try
                    {
                        while (await peer.ReceiveAsync(buffer, SocketFlags.None) > 0)
                        {
                        }
                    }
                    catch (SocketException)
                    {
                    }
                };
                await drain.Should().CompleteWithinAsync(Guard, "the disposed reactor closed the peer's other end");
            }

            io.Reactor.RegisteredCount.Should().Be(0);
        }
        finally
        {
            peers.ForEach(p => p.Dispose());
            await io.DisposeAsync();
            File.Delete(unixPath);
        }

        await AssertDescriptorsBackAsync(before, margin: 2, "after the reactor's disposal");
        unobserved.Collect().Should().BeEmpty("no I/O task may fault unobserved");
    }

    [Fact]
    public async Task Repeated_churn_rounds_keep_managed_memory_registrations_and_descriptors_flat()
    {
        // Round after round of the churn above (all endings but the slow grace-period one): after the first round has
        // warmed every pool up, later rounds must not grow the managed heap, the registration table's use, or the
        // descriptor count. A closed connection that stays reachable (from the reactor's table, a timer, a token
        // registration, a pool) shows here as growth proportional to the rounds.
        using var unobserved = new UnobservedScope();
        await using var io = new IoTestContext();
        using ReactorSocket listener = io.Listen(backlog: 1024);
        (int Sockets, int Epolls) before = await BaselineAsync(io, listener);
        int registeredBefore = io.Reactor.RegisteredCount;
        var random = new Random(42);
        long afterWarmUp = 0;
        const int Rounds = 5;
        for (int round = 0; round < Rounds; round++)
        {
            var failures = new ConcurrentQueue<string>();
            var scenarios = new List<Task>();
            for (int i = 0; i < 24; i++)
            {
                int scenario = random.Next(ScenarioCount - 1);
                scenario = scenario >= 4 ? scenario + 1 : scenario; // not 4: a full grace period per connection
                int scenarioSeed = (round * 100) + i;
                Socket peer = NewPeer();
                ReactorSocket server = await io.AcceptConnectedAsync(listener, peer);
                scenarios.Add(Task.Run(async () =>
                {
                    try
                    {
                        await RunScenarioAsync(io, scenario, server, peer, scenarioSeed).WaitAsync(TimeSpan.FromSeconds(15));
                    }
                    catch (Exception e)
                    {
                        failures.Enqueue($"scenario {scenario} (seed {scenarioSeed}): {e}");
                        server.Dispose();
                    }
                    finally
                    {
                        peer.Dispose();
                    }
                }));
            }

            await Task.WhenAll(scenarios).WaitAsync(TimeSpan.FromSeconds(30));
            failures.Should().BeEmpty();
            io.Reactor.RegisteredCount.Should().Be(registeredBefore, $"round {round} left no registration");
            FullCollect();
            long memory = GC.GetTotalMemory(forceFullCollection: true);
            if (round == 0)
            {
                afterWarmUp = memory;
            }
            else if (round == Rounds - 1)
            {
                (memory - afterWarmUp).Should().BeLessThan(16L << 20, "closed connections must not stay reachable round after round");
            }
        }

        await AssertStillServesAsync(io, listener);
        await AssertDescriptorsBackAsync(before, margin: 2, "after the rounds");
        unobserved.Collect().Should().BeEmpty("no I/O task may fault unobserved");
    }

    [Fact]
    public async Task A_long_lived_token_shared_by_thousands_of_parked_receives_and_accepts_never_cancels_a_later_operation()
    {
        // A server passes one application-lifetime token to every operation. Each parked operation registers with it;
        // the registration must go with the operation (docs/io.md: disposed by the awaiter when it reads the result).
        // One left behind would, at shutdown, cancel whatever operation the reused operation object serves then.
        await using var io = new IoTestContext();
        using ReactorSocket listener = io.Listen();
        using var lifetime = new CancellationTokenSource();
        (ReactorSocket client, ReactorSocket server) = await io.ConnectPairOnSchedulerAsync(listener);
        using (client)
        using (server)
        {
            await io.Run(async () =>
            {
                var one = new byte[1];
                for (int i = 0; i < 2000; i++)
                {
                    ValueTask<int> receive = server.ReceiveAsync(one, lifetime.Token);
                    await client.SendAsync(new[] { (byte)i });
                    (await receive).Should().Be(1);
                    one[0].Should().Be((byte)i);
                }

                for (int i = 0; i < 100; i++)
                {
                    ValueTask<ReactorSocket> accept = listener.AcceptAsync(lifetime.Token);
                    using ReactorSocket connected = await ReactorSocket.ConnectAsync(io.Reactor, listener.LocalEndPoint!, lifetime.Token);
                    using ReactorSocket accepted = await accept;
                }
            }, TimeSpan.FromSeconds(30));

            // Later operations without the token, parked when the token fires.
            Task<int> laterReceive = io.Run(async () => await server.ReceiveAsync(new byte[1]));
            Task<ReactorSocket> laterAccept = io.Run(async () => await listener.AcceptAsync());
            await Task.Delay(20);
            await lifetime.CancelAsync();
            await Task.Delay(50);
            laterReceive.IsCompleted.Should().BeFalse("a registration left by an earlier receive must not cancel this one");
            laterAccept.IsCompleted.Should().BeFalse("a registration left by an earlier accept must not cancel this one");

            await io.Run(async () => await client.SendAsync(new byte[] { 7 }));
            (await laterReceive.WaitAsync(Guard)).Should().Be(1);
            using ReactorSocket last = await io.Run(async () => await ReactorSocket.ConnectAsync(io.Reactor, listener.LocalEndPoint!));
            using ReactorSocket lastAccepted = await laterAccept.WaitAsync(Guard);
        }
    }

    [Theory]
    [InlineData(21)]
    [InlineData(22)]
    public async Task Tls_sessions_over_connections_ended_every_abrupt_way_leak_nothing_and_spare_a_bystander(int seed)
    {
        // SslStream over a ReactorConnection (docs/io.md, "TLS and other streams"), against System.Net.Sockets clients,
        // ended at random: an orderly close_notify exchange, a client reset mid-transfer, DisposeAsync under a pending
        // TLS read, DisposeAsync under a TLS write held by a client that does not read. Every session settles, the
        // orderly ones deliver every byte, a bystander session's stream stays intact, and nothing leaks.
        using var unobserved = new UnobservedScope();
        using X509Certificate2 certificate = TestCertificates.CreateSelfSignedServer();
        await using var io = new IoTestContext();
        using ReactorSocket listener = io.Listen(backlog: 1024);
        (int Sockets, int Epolls) before = await BaselineAsync(io, listener);
        int registeredBefore = io.Reactor.RegisteredCount;

        async Task<(ReactorConnection Connection, SslStream Server, Socket Peer, SslStream Client)> HandshakeAsync(bool smallPeerBuffer)
        {
            Socket peer = NewPeer(smallPeerBuffer);
            var connection = ReactorConnection.Create(await io.AcceptConnectedAsync(listener, peer));
            var server = new SslStream(new DuplexPipeStream(connection), leaveInnerStreamOpen: false);
            Task serverHandshake = io.Run(() => server.AuthenticateAsServerAsync(new SslServerAuthenticationOptions { ServerCertificate = certificate }));
            var client = new SslStream(new NetworkStream(peer, ownsSocket: false), leaveInnerStreamOpen: false,
                (_, presented, _, _) => presented is not null && presented.GetCertHashString() == certificate.GetCertHashString());
            await client.AuthenticateAsClientAsync("localhost").WaitAsync(Guard);
            await serverHandshake.WaitAsync(Guard);
            return (connection, server, peer, client);
        }

        static async Task<ReadOutcome> ReadTlsAsync(Stream stream, int streamSeed)
        {
            var buffer = new byte[16 << 10];
            long count = 0;
            long mismatch = -1;
            try
            {
                int n;
                while ((n = await stream.ReadAsync(buffer)) > 0)
                {
                    if (mismatch < 0)
                    {
                        mismatch = FirstMismatch(buffer.AsSpan(0, n), streamSeed, count);
                    }

                    count += n;
                }

                return new ReadOutcome(count, mismatch, null);
            }
            catch (Exception e)
            {
                return new ReadOutcome(count, mismatch, e);
            }
        }

        static async Task WriteTlsAsync(Stream stream, int streamSeed, long length)
        {
            var chunk = new byte[16 << 10];
            long written = 0;
            while (written < length)
            {
                int n = (int)Math.Min(length - written, chunk.Length);
                Fill(chunk.AsSpan(0, n), streamSeed, written);
                await stream.WriteAsync(chunk.AsMemory(0, n));
                written += n;
            }
        }

        // The bystander: 2 MB client → server over TLS during the whole churn, verified on the server.
        (ReactorConnection byConnection, SslStream byServer, Socket byPeer, SslStream byClient) = await HandshakeAsync(false);
        Task<ReadOutcome> byRead = io.Run(() => ReadTlsAsync(byServer, 700), TimeSpan.FromSeconds(60));
        Task byWrite = Task.Run(async () =>
        {
            await WriteTlsAsync(byClient, 700, 2 << 20);
            await byClient.ShutdownAsync();
            byPeer.Shutdown(SocketShutdown.Send);
        });

        var random = new Random(seed);
        var failures = new ConcurrentQueue<string>();
        var sessions = new List<Task>();
        for (int i = 0; i < 16; i++)
        {
            int way = random.Next(4);
            int streamSeed = (seed * 100) + i;
            long length = random.Next(1, 256 << 10);
            (ReactorConnection connection, SslStream server, Socket peer, SslStream client) = await HandshakeAsync(smallPeerBuffer: way == 3);
            sessions.Add(Task.Run(async () =>
            {
                try
                {
                    switch (way)
                    {
                        case 0:
                            {
                                // Orderly both ways: every byte, then close_notify and FIN.
                                Task<ReadOutcome> serverRead = io.Run(() => ReadTlsAsync(server, streamSeed));
                                await WriteTlsAsync(client, streamSeed, length);
                                await client.ShutdownAsync();
                                peer.Shutdown(SocketShutdown.Send);
                                (await serverRead.WaitAsync(Guard)).Should().Be(new ReadOutcome(length, -1, null));
                                Task<ReadOutcome> clientRead = ReadTlsAsync(client, streamSeed + 1);
                                await io.Run(async () =>
                                {
                                    await WriteTlsAsync(server, streamSeed + 1, length);
                                    await server.ShutdownAsync();
                                    await server.DisposeAsync();
                                });
                                (await clientRead.WaitAsync(Guard)).Should().Be(new ReadOutcome(length, -1, null));
                                break;
                            }

                        case 1:
                            {
                                // The client resets mid-transfer: the server's read ends (intact prefix) with an exception.
                                Task<ReadOutcome> serverRead = io.Run(() => ReadTlsAsync(server, streamSeed));
                                await WriteTlsAsync(client, streamSeed, length);
                                Reset(peer);
                                ReadOutcome got = await serverRead.WaitAsync(Guard);
                                got.Mismatch.Should().Be(-1);
                                got.End.Should().NotBeNull("a TLS stream cut by a reset is not an orderly end");
                                break;
                            }

                        case 2:
                            {
                                // DisposeAsync under a pending TLS read: the read ends, the client sees the close.
                                Task<ReadOutcome> serverRead = io.Run(() => ReadTlsAsync(server, streamSeed));
                                await Task.Delay(random.Next(3));
                                await connection.DisposeAsync().AsTask().WaitAsync(Guard);
                                (await serverRead.WaitAsync(Guard)).Count.Should().Be(0);
                                (await ReadTlsAsync(client, streamSeed).WaitAsync(Guard)).Count.Should().Be(0);
                                break;
                            }

                        default:
                            {
                                // DisposeAsync under a TLS write held by a client that does not read.
                                Task write = io.Run(() => WriteTlsAsync(server, streamSeed, 64L << 20), TimeSpan.FromSeconds(30));
                                await Task.WhenAny(write, Task.Delay(300));
                                // Timed to the disposal's completion, on the thread that completes it: the test's
                                // resumption after the await waits for a pool thread, which a loaded run hands out late.
                                (await Timed.UntilCompleted(() => connection.DisposeAsync().AsTask(), Guard)).Should().BeLessThan(TimeSpan.FromSeconds(5));
                                (await Record(write)).Should().NotBeNull("a write cut off by DisposeAsync cannot report success");
                                ReadOutcome got = await ReadTlsAsync(client, streamSeed).WaitAsync(Guard);
                                got.Mismatch.Should().Be(-1);
                                break;
                            }
                    }
                }
                catch (Exception e)
                {
                    failures.Enqueue($"TLS way {way} (seed {streamSeed}): {e}");
                }
                finally
                {
                    await client.DisposeAsync();
                    peer.Dispose();
                    await connection.DisposeAsync().AsTask().WaitAsync(Guard);
                }
            }));
        }

        await Task.WhenAll(sessions).WaitAsync(TimeSpan.FromSeconds(30));
        failures.Should().BeEmpty();
        await byWrite.WaitAsync(TimeSpan.FromSeconds(30));
        (await byRead.WaitAsync(TimeSpan.FromSeconds(30))).Should().Be(new ReadOutcome(2 << 20, -1, null), "the bystander's TLS stream");
        await byClient.DisposeAsync();
        byPeer.Dispose();
        await byConnection.DisposeAsync().AsTask().WaitAsync(Guard);

        await AssertStillServesAsync(io, listener);
        io.Reactor.RegisteredCount.Should().Be(registeredBefore);
        await AssertDescriptorsBackAsync(before, margin: 2, "after the TLS churn");
        unobserved.Collect().Should().BeEmpty("no I/O task may fault unobserved");
    }

    [Theory]
    [InlineData(31)]
    [InlineData(32)]
    public async Task Seeded_churn_over_Unix_domain_sockets_leaks_nothing_and_loses_nothing(int seed)
    {
        // The family-agnostic endings of the churn above over Unix domain sockets, where the lingering close asks the
        // kernel for bytes the peer has not read yet (SIOCOUTQ), there is no TCP_INQ, and no reset exists.
        using var unobserved = new UnobservedScope();
        string path = Path.Combine(Path.GetTempPath(), $"soak-{Guid.NewGuid():N}.sock");
        try
        {
            await using var io = new IoTestContext();
            using ReactorSocket listener = io.Listen(new UnixDomainSocketEndPoint(path), backlog: 1024);
            (int Sockets, int Epolls) before;
            using (var warm = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified))
            using (ReactorSocket accepted = await io.AcceptConnectedAsync(listener, warm))
            {
            }

            FullCollect();
            before = ReactorDescriptors.Count();
            int registeredBefore = io.Reactor.RegisteredCount;
            int[] endings = [0, 2, 3, 5, 6, 8, 9];
            var random = new Random(seed);
            var failures = new ConcurrentQueue<string>();
            for (int wave = 0; wave < 2; wave++)
            {
                var scenarios = new List<Task>();
                for (int i = 0; i < 16; i++)
                {
                    int scenario = endings[random.Next(endings.Length)];
                    int scenarioSeed = (seed * 10_000) + (wave * 100) + i;
                    var peer = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
                    ReactorSocket server = await io.AcceptConnectedAsync(listener, peer);
                    scenarios.Add(Task.Run(async () =>
                    {
                        try
                        {
                            await RunScenarioAsync(io, scenario, server, peer, scenarioSeed).WaitAsync(TimeSpan.FromSeconds(15));
                        }
                        catch (Exception e)
                        {
                            failures.Enqueue($"scenario {scenario} (seed {scenarioSeed}): {e}");
                            server.Dispose();
                        }
                        finally
                        {
                            peer.Dispose();
                        }
                    }));
                }

                await Task.WhenAll(scenarios).WaitAsync(TimeSpan.FromSeconds(30));
            }

            failures.Should().BeEmpty();
            io.Reactor.RegisteredCount.Should().Be(registeredBefore);
            await AssertDescriptorsBackAsync(before, margin: 2, "after the Unix domain churn");
        }
        finally
        {
            File.Delete(path);
        }

        unobserved.Collect().Should().BeEmpty("no I/O task may fault unobserved");
    }

    [Fact]
    public async Task DisposeAsync_racing_an_Output_abort_an_Input_completion_and_a_peer_reset_settles_every_party()
    {
        // Four parties end one connection at once, hundreds of times: DisposeAsync, the application aborting Output
        // (from another thread), the application completing Input, and the peer resetting, with data in flight both
        // ways. Each party must return (no hang, no unexpected exception type), and nothing may leak.
        using var unobserved = new UnobservedScope();
        await using var io = new IoTestContext();
        using ReactorSocket listener = io.Listen(backlog: 1024);
        (int Sockets, int Epolls) before = await BaselineAsync(io, listener);
        int registeredBefore = io.Reactor.RegisteredCount;
        var random = new Random(5);
        for (int batch = 0; batch < 6; batch++)
        {
            var rounds = new List<Task>();
            for (int i = 0; i < 25; i++)
            {
                Socket peer = NewPeer();
                var connection = ReactorConnection.Create(await io.AcceptConnectedAsync(listener, peer));
                int order = random.Next(24);
                int delay = random.Next(3);
                int request = random.Next(1, 100_000);
                rounds.Add(Task.Run(async () =>
                {
                    try
                    {
                        await peer.SendAsync(new byte[request], SocketFlags.None);
                        await io.Run(async () => await connection.Output.WriteAsync(new byte[50_000]));
                        var parties = new List<Task>
                        {
                            Task.Run(async () => await connection.DisposeAsync()),
                            io.Run(async () => await connection.Output.CompleteAsync(new InvalidOperationException("abort"))),
                            io.Run(async () => await connection.Input.CompleteAsync()),
                            Task.Run(async () =>
                            {
                                await Task.Delay(delay);
                                Reset(peer);
                            }),
                        };
                        if (order % 2 == 0)
                        {
                            parties.Reverse();
                        }

                        await Task.WhenAll(parties).WaitAsync(Guard);
                    }
                    finally
                    {
                        peer.Dispose();
                        await connection.DisposeAsync().AsTask().WaitAsync(Guard);
                    }
                }));
            }

            await Task.WhenAll(rounds).WaitAsync(TimeSpan.FromSeconds(30));
        }

        await AssertStillServesAsync(io, listener);
        io.Reactor.RegisteredCount.Should().Be(registeredBefore);
        await AssertDescriptorsBackAsync(before, margin: 2, "after the four-party races");
        unobserved.Collect().Should().BeEmpty("no I/O task may fault unobserved");
    }
}
