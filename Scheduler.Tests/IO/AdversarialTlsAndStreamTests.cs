using System.Buffers;
using System.IO.Pipelines;
using System.Net;
using System.Net.Security;
using System.Net.Sockets;
using System.Security.Authentication;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using Scheduler.IO;

namespace Scheduler.Tests.IO;

/// <summary>
/// Adversarial scenarios for a <see cref="ReactorConnection"/> used as a <see cref="Stream"/> (docs/io.md, "TLS and other
/// streams"): <see cref="SslStream"/> over its pipes with peers that reset or cut the stream during the handshake, in the
/// middle of a record and after close_notify; disposal during a handshake and during a write held by backpressure;
/// multi-megabyte full-duplex TLS with tiny pipe thresholds over IPv4, IPv6 and Unix domain sockets; the
/// <c>AsStream</c> adapters' leaveOpen and disposal semantics; cancellation and <c>AdvanceTo</c> misuse through them.
/// Every failure must reach the party that awaits as a conventional exception, never as a hang, and never touch another
/// connection on the same reactor. Every wait is bounded.
/// </summary>
public sealed class AdversarialTlsAndStreamTests
{
    private static readonly TimeSpan Guard = TimeSpan.FromSeconds(10);

    private static readonly Lazy<X509Certificate2> s_certificate = new(TestCertificates.CreateSelfSignedServer);

    private static X509Certificate2 Certificate => s_certificate.Value;

    private static PipeOptions Options(IoTestContext io, long pause, long resume) => new(
        readerScheduler: io.Scheduler.PipeScheduler,
        writerScheduler: io.Scheduler.PipeScheduler,
        pauseWriterThreshold: pause,
        resumeWriterThreshold: resume,
        useSynchronizationContext: false);

    private static bool IsConventional(Exception e) =>
        e is IOException or SocketException or ObjectDisposedException or OperationCanceledException or AuthenticationException;

    private static SslServerAuthenticationOptions ServerOptions => new() { ServerCertificate = Certificate };

    private static SslClientAuthenticationOptions ClientOptions => new()
    {
        TargetHost = "localhost",
        RemoteCertificateValidationCallback = static (_, presented, _, _) =>
            presented is not null && presented.GetCertHashString() == Certificate.GetCertHashString(),
    };

    /// <summary>Awaits <paramref name="task"/> (bounded) and returns what it threw, or null when it succeeded.</summary>
    private static Task<Exception?> Outcome(Task task, TimeSpan bound) => task.ExceptionWithin(bound);

    /// <summary>A healthy echo connection on the same reactor: proves another connection is unaffected.</summary>
    private sealed class Bystander : IAsyncDisposable
    {
        private readonly IoTestContext _io;
        private readonly ReactorConnection _server;
        private readonly ReactorConnection _client;
        private readonly Task _echo;

        private Bystander(IoTestContext io, ReactorConnection server, ReactorConnection client)
        {
            _io = io;
            _server = server;
            _client = client;
            _echo = io.Run(() => ReactorConnectionTests.EchoAsync(server), TimeSpan.FromSeconds(60));
        }

        public static async Task<Bystander> StartAsync(IoTestContext io)
        {
            using ReactorSocket listener = io.Listen();
            (ReactorSocket client, ReactorSocket server) = await io.ConnectPairOnSchedulerAsync(listener);
            return new Bystander(io, ReactorConnection.Create(server), ReactorConnection.Create(client));
        }

        /// <summary>One round trip of <paramref name="size"/> bytes, checked.</summary>
        public Task AssertEchoesAsync(int size, int seed) => _io.Run(async () =>
        {
            byte[] message = IoTestContext.Pattern(size, seed);
            Task<byte[]> back = ReadExactlyAsync(_client.Input, size);
            await _client.Output.WriteAsync(message);
            (await back).Should().Equal(message, "another connection on the same reactor must be unaffected");
        }, Guard);

        public async ValueTask DisposeAsync()
        {
            await _client.Output.CompleteAsync();
            await _echo.WaitAsync(Guard);
            await _client.DisposeAsync().AsTask().WaitAsync(Guard);
            await _server.DisposeAsync().AsTask().WaitAsync(Guard);
        }

        private static async Task<byte[]> ReadExactlyAsync(PipeReader reader, int size)
        {
            while (true)
            {
                ReadResult result = await reader.ReadAsync();
                if (result.Buffer.Length >= size)
                {
                    byte[] bytes = result.Buffer.Slice(0, size).ToArray();
                    reader.AdvanceTo(result.Buffer.GetPosition(size));
                    return bytes;
                }

                if (result.IsCompleted)
                {
                    throw new EndOfStreamException($"the bystander's echo ended after {result.Buffer.Length} of {size} bytes");
                }

                reader.AdvanceTo(result.Buffer.Start, result.Buffer.End);
            }
        }
    }

    // ------------------------------------------------------------------------------------------------------------
    // Full duplex TLS, both ends ours, tiny thresholds, three address families.
    // ------------------------------------------------------------------------------------------------------------

    [Theory]
    [InlineData("ipv4")]
    [InlineData("ipv6")]
    [InlineData("unix")]
    public async Task Tls_between_two_connections_carries_megabytes_both_ways_at_once_with_tiny_thresholds_intact(string family)
    {
        await using var io = new IoTestContext();
        string? path = family == "unix" ? Path.Combine(Path.GetTempPath(), $"adv-tls-{Guid.NewGuid():N}.sock") : null;
        EndPoint endPoint = family switch
        {
            "ipv6" => new IPEndPoint(IPAddress.IPv6Loopback, 0),
            "unix" => new UnixDomainSocketEndPoint(path!),
            _ => IoTestContext.Loopback,
        };
        try
        {
            (ReactorSocket clientSocket, ReactorSocket serverSocket) = await ConnectAsync(io, endPoint);

            // Thresholds far below one TLS record (16 KiB + overhead): every record crosses many pauses and resumes.
            var server = ReactorConnection.Create(serverSocket, Options(io, 3000, 1000), Options(io, 3000, 1000));
            await using var disposeServer = IoTestContext.DisposeWithin(server);
            var client = ReactorConnection.Create(clientSocket, Options(io, 3000, 1000), Options(io, 3000, 1000));
            await using var disposeClient = IoTestContext.DisposeWithin(client);

            const int Size = 3 << 20;
            byte[] toServer = IoTestContext.Pattern(Size, 1);
            byte[] toClient = IoTestContext.Pattern(Size, 2);

            // Neither side closes before both have read everything: a DisposeAsync drains for at most its grace period
            // (one second), and a loaded machine can take longer than that to read 3 MB through 3000-byte pauses.
            var serverRead = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            var clientRead = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            Task bothRead = Task.WhenAll(serverRead.Task, clientRead.Task);
            Task<byte[]> serverSide = io.Run(() => TlsDuplexAsync(io, server, isServer: true, toClient, serverRead, bothRead), TimeSpan.FromSeconds(25));
            Task<byte[]> clientSide = io.Run(() => TlsDuplexAsync(io, client, isServer: false, toServer, clientRead, bothRead), TimeSpan.FromSeconds(25));
            byte[] serverReceived = await serverSide;
            byte[] clientReceived = await clientSide;

            SHA256.HashData(serverReceived).Should().Equal(SHA256.HashData(toServer), "every byte client→server must arrive in order");
            SHA256.HashData(clientReceived).Should().Equal(SHA256.HashData(toClient), "every byte server→client must arrive in order");
        }
        finally
        {
            if (path is not null)
            {
                File.Delete(path);
            }
        }
    }

    private static async Task<(ReactorSocket Client, ReactorSocket Server)> ConnectAsync(IoTestContext io, EndPoint endPoint)
    {
        using ReactorSocket listener = io.Listen(endPoint);
        return await io.ConnectPairOnSchedulerAsync(listener);
    }

    /// <summary>Handshakes, then writes <paramref name="send"/> in odd-sized pieces while reading as many bytes from the peer.</summary>
    /// <remarks>
    /// No close_notify: <c>ShutdownAsync</c> while this side's read is in progress failed now and then in OpenSSL
    /// (<c>SSL_ERROR_SYSCALL</c> from <c>SSL_shutdown</c>, 130 ms into a CI run), a shutdown racing a read on one
    /// <c>SSL</c> object, below this library. Both sides know the length, so each reads exactly that much.
    /// </remarks>
    private static async Task<byte[]> TlsDuplexAsync(IoTestContext io, ReactorConnection connection, bool isServer, byte[] send, TaskCompletionSource readAll, Task bothRead)
    {
        await using var tls = new SslStream(new DuplexPipeStream(connection), leaveInnerStreamOpen: false);
        if (isServer)
        {
            await tls.AuthenticateAsServerAsync(ServerOptions);
        }
        else
        {
            await tls.AuthenticateAsClientAsync(ClientOptions);
        }

        Task writing = io.Scheduler.Factory.StartNew(async () =>
        {
            var random = new Random(isServer ? 7 : 8);
            int offset = 0;
            while (offset < send.Length)
            {
                int n = Math.Min(send.Length - offset, random.Next(1, 70_000));
                await tls.WriteAsync(send.AsMemory(offset, n));
                offset += n;
            }
        }).Unwrap();

        var received = new MemoryStream();
        var buffer = new byte[40_000];
        var readRandom = new Random(isServer ? 9 : 10);
        int read;
        while (received.Length < send.Length
            && (read = await tls.ReadAsync(buffer.AsMemory(0, (int)Math.Min(readRandom.Next(1, buffer.Length), send.Length - received.Length)))) > 0)
        {
            received.Write(buffer, 0, read);
        }

        await writing;
        readAll.SetResult();
        await bothRead;
        return received.ToArray();
    }

    // ------------------------------------------------------------------------------------------------------------
    // Dispose racing an application that is actively writing Output.
    // ------------------------------------------------------------------------------------------------------------

    [Fact]
    public async Task DisposeAsync_racing_an_application_in_the_middle_of_GetMemory_Advance_FlushAsync_surfaces_only_conventional_exceptions()
    {
        await using var io = new IoTestContext();
        using ReactorSocket listener = io.Listen();
        var unexpected = new List<Exception>();
        for (int round = 0; round < 150; round++)
        {
            (ReactorSocket client, ReactorSocket server) = await io.ConnectPairOnSchedulerAsync(listener);
            using (client)
            {
                var connection = ReactorConnection.Create(server);
                Task draining = io.Run(async () =>
                {
                    var scratch = new byte[64 << 10];
                    try
                    {
                        while (await client.ReceiveAsync(scratch) > 0)
                        {
                        }
                    }
                    catch (SocketException)
                    {
                    }
                }, Guard);

                using var started = new SemaphoreSlim(0);
                Task writer = io.Run(async () =>
                {
                    started.Release();
                    for (int i = 0; i < 100_000; i++)
                    {
                        Memory<byte> memory = connection.Output.GetMemory(1000);
                        if (i % 2 == 1)
                        {
                            await Task.Yield(); // an IBufferWriter user may await between GetMemory and Advance
                        }

                        memory.Span[..1000].Fill((byte)i);
                        connection.Output.Advance(1000);
                        FlushResult flush = await connection.Output.FlushAsync();
                        if (flush.IsCompleted)
                        {
                            return;
                        }
                    }
                }, Guard);

                await started.WaitAsync(Guard);
                await Task.Delay(round % 5);
                await connection.DisposeAsync().AsTask().WaitAsync(Guard);
                Exception? failure = await Outcome(writer, Guard);
                if (failure is not null && !IsConventional(failure) &&
                    !(failure is InvalidOperationException && failure.Message.Contains("completed", StringComparison.OrdinalIgnoreCase)))
                {
                    unexpected.Add(failure);
                }

                client.Dispose();
                await Outcome(draining, Guard);
            }
        }

        unexpected.Should().BeEmpty("a writer racing DisposeAsync may be told the pipe is completed, but not crash inside the pipe: {0}",
            string.Join("\n---\n", unexpected.Take(3)));
    }

    [Fact]
    public async Task DisposeAsync_while_the_application_holds_GetMemory_neither_recycles_that_memory_nor_blames_the_Advance_argument()
    {
        await using var io = new IoTestContext();
        var pool = new TrackingPool();
        var options = new PipeOptions(pool: pool, readerScheduler: io.Scheduler.PipeScheduler, writerScheduler: io.Scheduler.PipeScheduler,
            useSynchronizationContext: false);
        (ReactorConnection connection, Socket plain) = await PlainPeerAsync(io, options);
        using (plain)
        {
            (bool recycled, Exception? advance, Exception? flush) = await io.Run(async () =>
            {
                // The application asks for memory, and (legitimately) awaits something before filling it in and advancing
                // (an IBufferWriter user: a serializer, a formatter). Meanwhile a shutdown path disposes the connection.
                Memory<byte> memory = connection.Output.GetMemory(1000);
                await Task.Run(() => connection.DisposeAsync().AsTask()).WaitAsync(Guard);
                bool returned = pool.WasReturned(memory);
                memory.Span[..1000].Fill(0xAB); // writes into whatever that memory now is
                Exception? advanceFailure = null;
                try
                {
                    connection.Output.Advance(1000);
                }
                catch (Exception e)
                {
                    advanceFailure = e;
                }

                Exception? flushFailure = await Outcome(FlushAsync(connection.Output), Guard);
                return (returned, advanceFailure, flushFailure);
            }, Guard);

            // Pipelines lets a writer hold GetMemory's buffer until Advance; only the writer's own Complete ends that.
            // DisposeAsync completes the application's writer from outside, so the pipe returns the block to the pool
            // while the application still writes into it: the next rental (another connection) would get our bytes.
            recycled.Should().BeFalse("the block the application is still filling must not go back to the pool under it (then Advance threw {0})", advance?.GetType().Name ?? "nothing");
            (advance is null || advance is InvalidOperationException || advance is ObjectDisposedException).Should().BeTrue(
                "a correct Advance(1000) after GetMemory(1000) may be refused because the connection is gone, but not blamed on its argument: {0}",
                advance);
            (flush is null || IsConventional(flush) || flush is InvalidOperationException).Should().BeTrue("not {0}", flush);
        }
    }

    // A flush refused for disposal throws ObjectDisposedException synchronously (as the pipe's own refusals do).
    private static async Task FlushAsync(PipeWriter writer) => await writer.FlushAsync();

    /// <summary>A memory pool that remembers every block it handed out and whether it was returned.</summary>
    private sealed class TrackingPool : MemoryPool<byte>
    {
        private readonly List<Owner> _owners = [];

        public override int MaxBufferSize => 1 << 20;

        public override IMemoryOwner<byte> Rent(int minBufferSize = -1)
        {
            var owner = new Owner(new byte[Math.Max(minBufferSize, 4096)]);
            lock (_owners)
            {
                _owners.Add(owner);
            }

            return owner;
        }

        public bool WasReturned(Memory<byte> memory)
        {
            if (!System.Runtime.InteropServices.MemoryMarshal.TryGetArray((ReadOnlyMemory<byte>)memory, out ArraySegment<byte> segment))
            {
                throw new InvalidOperationException("pool memory is always an array");
            }

            lock (_owners)
            {
                return _owners.Single(o => ReferenceEquals(o.Array, segment.Array)).Returned;
            }
        }

        protected override void Dispose(bool disposing)
        {
        }

        private sealed class Owner(byte[] array) : IMemoryOwner<byte>
        {
            public byte[] Array { get; } = array;

            public bool Returned { get; private set; }

            public Memory<byte> Memory => Array;

            public void Dispose() => Returned = true;
        }
    }

    // ------------------------------------------------------------------------------------------------------------
    // A System.Net.Sockets peer that cuts its stream (reset, FIN, or silence) at a chosen byte.
    // ------------------------------------------------------------------------------------------------------------

    public enum Cut
    {
        Reset,
        Fin,
        Silence,
    }

    /// <summary>
    /// Connects a plain socket to a fresh listener and returns our side as a connection (with <paramref name="options"/>
    /// on both pipes, when given) and the plain socket.
    /// </summary>
    private static async Task<(ReactorConnection Connection, Socket Plain)> PlainPeerAsync(IoTestContext io, PipeOptions? options = null)
    {
        using ReactorSocket listener = io.Listen();
        Socket plain = IoTestContext.NewPlainSocket();
        ReactorSocket server = await io.AcceptConnectedAsync(listener, plain);
        return (ReactorConnection.Create(server, options, options), plain);
    }

    /// <summary>Server side of a handshake on the scheduler; the SslStream is returned for further use.</summary>
    private static Task<SslStream> ServerHandshake(IoTestContext io, ReactorConnection connection, CancellationToken token = default) =>
        io.Scheduler.Factory.StartNew(async () =>
        {
            var tls = new SslStream(new DuplexPipeStream(connection), leaveInnerStreamOpen: false);
            try
            {
                await tls.AuthenticateAsServerAsync(ServerOptions, token);
                return tls;
            }
            catch
            {
                await tls.DisposeAsync();
                throw;
            }
        }).Unwrap();

    public static TheoryData<Cut, long, int> HandshakeCuts() => new()
    {
        { Cut.Reset, 0, int.MaxValue },   // before the first byte of the ClientHello
        { Cut.Reset, 3, int.MaxValue },   // inside the record header
        { Cut.Reset, 60, int.MaxValue },  // inside the ClientHello
        { Cut.Reset, long.MaxValue, 1 },  // after the whole first flight, before the client's Finished
        { Cut.Fin, 0, int.MaxValue },
        { Cut.Fin, 3, int.MaxValue },
        { Cut.Fin, 60, int.MaxValue },
        { Cut.Fin, long.MaxValue, 1 },
    };

    [Theory]
    [MemberData(nameof(HandshakeCuts))]
    public async Task A_peer_that_resets_or_ends_its_stream_mid_handshake_fails_AuthenticateAsServer_conventionally_and_spares_others(
        Cut cut, long budget, int writes)
    {
        await using var io = new IoTestContext();
        await using Bystander bystander = await Bystander.StartAsync(io);
        (ReactorConnection connection, Socket plain) = await PlainPeerAsync(io);
        await using var disposeConnection = IoTestContext.DisposeWithin(connection);
        using (plain)
        {
            Task<SslStream> handshake = ServerHandshake(io, connection);
            var cutter = new CuttingStream(plain, cut);
            cutter.Arm(budget, writes);
            await using var client = new SslStream(cutter, leaveInnerStreamOpen: true);
            Task clientHandshake = client.AuthenticateAsClientAsync(ClientOptions);
            await cutter.CutDone.Task.WaitAsync(Guard);

            Exception? failure = await Outcome(handshake, Guard);
            failure.Should().NotBeNull("a handshake whose peer {0} after {1} bytes cannot succeed", cut, budget);
            IsConventional(failure!).Should().BeTrue("the awaiting party must see a conventional exception, not {0}", failure);
            await Outcome(clientHandshake, Guard);
            await bystander.AssertEchoesAsync(100_000, 3);
        }
    }

    [Fact]
    public async Task Dozens_of_handshakes_cut_at_random_points_at_once_fail_each_alone_while_a_bystander_streams_intact()
    {
        await using var io = new IoTestContext();
        await using Bystander bystander = await Bystander.StartAsync(io);
        Task streaming = bystander.AssertEchoesAsync(2 << 20, 23);
        var random = new Random(24);
        var rounds = new List<Task<Exception?>>();
        var sockets = new List<Socket>();
        var connections = new List<ReactorConnection>();
        using ReactorSocket listener = io.Listen();
        for (int i = 0; i < 24; i++)
        {
            Socket plain = IoTestContext.NewPlainSocket();
            sockets.Add(plain);
            var connection = ReactorConnection.Create(await io.AcceptConnectedAsync(listener, plain));
            connections.Add(connection);
            Task<SslStream> handshake = ServerHandshake(io, connection);
            var cutter = new CuttingStream(plain, random.Next(2) == 0 ? Cut.Reset : Cut.Fin);
            if (random.Next(3) == 0)
            {
                cutter.Arm(long.MaxValue, 1); // after the whole ClientHello, before the client's Finished
            }
            else
            {
                cutter.Arm(random.Next(0, 150), int.MaxValue); // inside the ClientHello (a .NET ClientHello is larger)
            }
            var client = new SslStream(cutter, leaveInnerStreamOpen: true);
            _ = client.AuthenticateAsClientAsync(ClientOptions).ContinueWith(
                ended =>
                {
                    _ = ended.Exception; // the cut fails it on purpose: observed, so it never reaches UnobservedTaskException
                    client.Dispose();
                },
                TaskScheduler.Default);
            rounds.Add(Outcome(handshake, Guard));
        }

        Exception?[] outcomes = await Task.WhenAll(rounds).WaitAsync(Guard);
        outcomes.Should().AllSatisfy(e =>
        {
            e.Should().NotBeNull("every cut handshake fails");
            IsConventional(e!).Should().BeTrue("not {0}", e);
        });
        await streaming;
        foreach (ReactorConnection connection in connections)
        {
            await connection.DisposeAsync().AsTask().WaitAsync(Guard);
        }

        foreach (Socket socket in sockets)
        {
            socket.Dispose();
        }

        await bystander.AssertEchoesAsync(100_000, 25);
    }

    [Theory]
    [InlineData(Cut.Reset, 3)]
    [InlineData(Cut.Reset, 1000)]
    [InlineData(Cut.Reset, 200_000)]
    [InlineData(Cut.Fin, 3)]
    [InlineData(Cut.Fin, 1000)]
    [InlineData(Cut.Fin, 200_000)]
    public async Task A_peer_that_cuts_its_stream_inside_a_record_ends_our_reads_with_an_exception_after_an_intact_prefix(Cut cut, long budget)
    {
        await using var io = new IoTestContext();
        await using Bystander bystander = await Bystander.StartAsync(io);
        (ReactorConnection connection, Socket plain) = await PlainPeerAsync(io, Options(io, 4096, 2048));
        await using var disposeConnection = IoTestContext.DisposeWithin(connection);
        using (plain)
        {
            Task<SslStream> handshake = ServerHandshake(io, connection);
            var cutter = new CuttingStream(plain, cut);
            await using var client = new SslStream(cutter, leaveInnerStreamOpen: true);
            await client.AuthenticateAsClientAsync(ClientOptions).WaitAsync(Guard);
            await using SslStream server = await handshake.WaitAsync(Guard);

            byte[] message = IoTestContext.Pattern(1 << 20, 4);
            var received = new MemoryStream();
            Task<Exception?> reading = io.Run(async () =>
            {
                var buffer = new byte[10_000];
                try
                {
                    int n;
                    while ((n = await server.ReadAsync(buffer)) > 0)
                    {
                        received.Write(buffer, 0, n);
                    }

                    return null;
                }
                catch (Exception e)
                {
                    return e;
                }
            }, Guard);

            // Budgets land inside a record: 3 in the first header, 1000 in the first record's body, 200,000 in the 13th.
            cutter.Arm(budget, int.MaxValue);
            await Outcome(client.WriteAsync(message).AsTask(), Guard);
            await cutter.CutDone.Task.WaitAsync(Guard);

            Exception? failure = await reading;
            failure.Should().NotBeNull("a stream cut inside a TLS record ({0}) is not an orderly end", cut);
            IsConventional(failure!).Should().BeTrue("the reader must see a conventional exception, not {0}", failure);
            received.Length.Should().BeLessThan(message.Length);
            received.ToArray().AsSpan().SequenceEqual(message.AsSpan(0, (int)received.Length)).Should().BeTrue("what arrived is an intact prefix");
            await bystander.AssertEchoesAsync(100_000, 5);
        }
    }

    [Fact]
    public async Task A_TLS_read_cancelled_by_its_token_in_the_middle_of_a_record_resumes_with_the_record_intact()
    {
        await using var io = new IoTestContext();
        (ReactorConnection connection, Socket plain) = await PlainPeerAsync(io, Options(io, 4096, 2048));
        await using var disposeConnection = IoTestContext.DisposeWithin(connection);
        using (plain)
        {
            Task<SslStream> handshake = ServerHandshake(io, connection);
            var cutter = new CuttingStream(plain, Cut.Silence);
            await using var client = new SslStream(cutter, leaveInnerStreamOpen: true);
            await client.AuthenticateAsClientAsync(ClientOptions).WaitAsync(Guard);
            await using SslStream server = await handshake.WaitAsync(Guard);

            byte[] message = IoTestContext.Pattern(10_000, 26);
            cutter.Arm(6000, int.MaxValue); // the record goes out up to its 6,000th byte, then the peer pauses
            await Outcome(client.WriteAsync(message).AsTask(), Guard);
            cutter.Remainder.Should().NotBeEmpty();

            using var cancel = new CancellationTokenSource();
            var buffer = new byte[message.Length];
            Task<int> first = io.Run(async () => await server.ReadAsync(buffer, cancel.Token), Guard);
            await Task.Delay(200);
            first.IsCompleted.Should().BeFalse("only part of the record has arrived");
            cancel.Cancel();
            (await Outcome(first, Guard)).Should().BeAssignableTo<OperationCanceledException>();

            await plain.SendAsync(cutter.Remainder).WaitAsync(Guard); // the rest of the record
            byte[] got = await io.Run(async () =>
            {
                var all = new MemoryStream();
                while (all.Length < message.Length)
                {
                    int n = await server.ReadAsync(buffer);
                    n.Should().BePositive();
                    all.Write(buffer, 0, n);
                }

                return all.ToArray();
            }, Guard);
            got.Should().Equal(message, "a cancelled read consumed nothing of the record");
        }
    }

    [Fact]
    public async Task After_the_peers_close_notify_and_reset_our_writes_fail_conventionally_instead_of_vanishing()
    {
        await using var io = new IoTestContext();
        await using Bystander bystander = await Bystander.StartAsync(io);
        (ReactorConnection connection, Socket plain) = await PlainPeerAsync(io);
        await using var disposeConnection = IoTestContext.DisposeWithin(connection);
        using (plain)
        {
            Task<SslStream> handshake = ServerHandshake(io, connection);
            var client = new SslStream(new NetworkStream(plain, ownsSocket: false), leaveInnerStreamOpen: true);
            await client.AuthenticateAsClientAsync(ClientOptions).WaitAsync(Guard);
            await using SslStream server = await handshake.WaitAsync(Guard);

            await client.WriteAsync(new byte[] { 1, 2, 3 });
            await client.ShutdownAsync().WaitAsync(Guard); // close_notify
            (await io.Run(async () =>
            {
                var buffer = new byte[16];
                int total = 0;
                int n;
                while ((n = await server.ReadAsync(buffer.AsMemory(total))) > 0)
                {
                    total += n;
                }

                return total;
            }, Guard)).Should().Be(3, "the data, then 0 at the peer's close_notify");

            plain.LingerState = new LingerOption(true, 0);
            plain.Close(); // RST

            // Our side keeps writing: the bytes cannot reach anyone, so a write must fail soon, not succeed forever.
            Exception? failure = await Outcome(io.Run(async () =>
            {
                var chunk = new byte[32 << 10];
                for (int i = 0; i < 2000; i++)
                {
                    await server.WriteAsync(chunk);
                }
            }, Guard), Guard);
            failure.Should().NotBeNull("64 MB written to a peer that reset must not all be reported as written");
            IsConventional(failure!).Should().BeTrue("not {0}", failure);
            await client.DisposeAsync();
            await bystander.AssertEchoesAsync(50_000, 6);
        }
    }

    // ------------------------------------------------------------------------------------------------------------
    // Disposal and cancellation while a handshake waits for a silent peer.
    // ------------------------------------------------------------------------------------------------------------

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task A_handshake_stalled_by_a_silent_peer_ends_conventionally_on_cancellation_or_DisposeAsync(bool dispose)
    {
        await using var io = new IoTestContext();
        await using Bystander bystander = await Bystander.StartAsync(io);
        (ReactorConnection connection, Socket plain) = await PlainPeerAsync(io);
        await using var disposeConnection = IoTestContext.DisposeWithin(connection);
        using (plain)
        {
            using var timeout = new CancellationTokenSource();
            Task<SslStream> handshake = ServerHandshake(io, connection, dispose ? CancellationToken.None : timeout.Token);
            var cutter = new CuttingStream(plain, Cut.Silence);
            cutter.Arm(40, int.MaxValue); // part of the ClientHello, then nothing
            await using var client = new SslStream(cutter, leaveInnerStreamOpen: true);
            Task clientHandshake = client.AuthenticateAsClientAsync(ClientOptions);
            await cutter.CutDone.Task.WaitAsync(Guard);
            await Task.Delay(100);
            handshake.IsCompleted.Should().BeFalse("the server waits for the rest of the ClientHello");

            if (dispose)
            {
                // Timed to the disposal's completion, on the thread that completes it: the test's resumption after the
                // await waits for a pool or xunit thread, which a loaded run hands out seconds late.
                (await Timed.UntilCompleted(() => connection.DisposeAsync().AsTask(), Guard))
                    .Should().BeLessThan(TimeSpan.FromSeconds(5), "DisposeAsync takes at most about a second");
            }
            else
            {
                timeout.Cancel();
            }

            Exception? failure = await Outcome(handshake, Guard);
            failure.Should().NotBeNull();
            IsConventional(failure!).Should().BeTrue("not {0}", failure);
            if (!dispose)
            {
                failure.Should().BeAssignableTo<OperationCanceledException>("the handshake's own token fired");
            }
            else
            {
                // Our close reaches the peer: its pending handshake read ends too.
                byte[] one = new byte[1];
                Exception? peerEnd = await Outcome(plain.ReceiveAsync(one.AsMemory()).AsTask(), Guard);
                (peerEnd is SocketException || peerEnd is null).Should().BeTrue("the peer sees our FIN or reset, not a hang: {0}", peerEnd);
            }

            await Outcome(clientHandshake, Guard); // failed by the cut; bounded generously, as anything that must not hang
            await bystander.AssertEchoesAsync(50_000, 7);
        }
    }

    // ------------------------------------------------------------------------------------------------------------
    // Backpressure under TLS, and disposal while a TLS write is held by it.
    // ------------------------------------------------------------------------------------------------------------

    private static async Task<(Task Pending, long Accepted)> WriteTlsUntilPaused(IoTestContext io, SslStream tls, DuplexPipeStream inner)
    {
        return await io.Run(async () =>
        {
            byte[] chunk = IoTestContext.Pattern(1 << 20, 8);
            for (int i = 0; i < 256; i++)
            {
                Task write = tls.WriteAsync(chunk).AsTask();
                if (await Task.WhenAny(write, Task.Delay(500)) != write)
                {
                    return (write, inner.Written);
                }

                await write;
            }

            throw new InvalidOperationException("256 MB went out to a peer that never reads: no backpressure");
        }, TimeSpan.FromSeconds(60));
    }

    [Fact]
    public async Task A_TLS_writer_to_a_peer_that_never_reads_is_paused_after_a_bounded_amount_and_DisposeAsync_then_fails_it()
    {
        await using var io = new IoTestContext();
        await using Bystander bystander = await Bystander.StartAsync(io);
        (ReactorConnection connection, Socket plain) = await PlainPeerAsync(io, Options(io, 16 << 10, 8 << 10));
        await using var disposeConnection = IoTestContext.DisposeWithin(connection);
        using (plain)
        {
            plain.ReceiveBufferSize = 64 << 10;
            var inner = new DuplexPipeStream(connection);
            Task<SslStream> handshake = io.Scheduler.Factory.StartNew(async () =>
            {
                var tls = new SslStream(inner, leaveInnerStreamOpen: true);
                await tls.AuthenticateAsServerAsync(ServerOptions);
                return tls;
            }).Unwrap();
            await using var client = new SslStream(new NetworkStream(plain, ownsSocket: false), leaveInnerStreamOpen: true);
            await client.AuthenticateAsClientAsync(ClientOptions).WaitAsync(Guard);
            SslStream server = await handshake.WaitAsync(Guard);

            (Task pending, long accepted) = await WriteTlsUntilPaused(io, server, inner);
            accepted.Should().BeLessThan(32L << 20, "pipe thresholds plus the kernel's buffers bound what a non-reading peer can make us hold");

            // Timed to the disposal's completion, on the thread that completes it: the test's resumption after the await
            // waits for a pool or xunit thread, which a loaded run hands out seconds late.
            (await Timed.UntilCompleted(() => connection.DisposeAsync().AsTask(), Guard))
                .Should().BeLessThan(TimeSpan.FromSeconds(5), "a peer that stopped reading cannot hang DisposeAsync");

            // The held write and any later one fail: the bytes will never be delivered.
            Exception? held = await Outcome(pending, Guard);
            (held is null || IsConventional(held)).Should().BeTrue("the held write ends conventionally, not with {0}", held);
            Exception? next = await Outcome(io.Run(() => server.WriteAsync(new byte[100]).AsTask(), Guard), Guard);
            next.Should().NotBeNull("a write after DisposeAsync cannot succeed");
            IsConventional(next!).Should().BeTrue("not {0}", next);
            await bystander.AssertEchoesAsync(100_000, 9);
        }
    }

    [Fact]
    public async Task A_reset_while_a_TLS_write_is_held_by_backpressure_fails_that_write_and_the_read_conventionally()
    {
        await using var io = new IoTestContext();
        await using Bystander bystander = await Bystander.StartAsync(io);
        (ReactorConnection connection, Socket plain) = await PlainPeerAsync(io, Options(io, 16 << 10, 8 << 10));
        await using var disposeConnection = IoTestContext.DisposeWithin(connection);
        using (plain)
        {
            plain.ReceiveBufferSize = 64 << 10;
            var inner = new DuplexPipeStream(connection);
            Task<SslStream> handshake = io.Scheduler.Factory.StartNew(async () =>
            {
                var tls = new SslStream(inner, leaveInnerStreamOpen: true);
                await tls.AuthenticateAsServerAsync(ServerOptions);
                return tls;
            }).Unwrap();
            await using var client = new SslStream(new NetworkStream(plain, ownsSocket: false), leaveInnerStreamOpen: true);
            await client.AuthenticateAsClientAsync(ClientOptions).WaitAsync(Guard);
            SslStream server = await handshake.WaitAsync(Guard);
            Task<int> read = io.Run(async () => await server.ReadAsync(new byte[100]), TimeSpan.FromSeconds(60));

            (Task pending, _) = await WriteTlsUntilPaused(io, server, inner);
            plain.LingerState = new LingerOption(true, 0);
            plain.Close(); // RST

            Exception? held = await Outcome(pending, Guard);
            held.Should().NotBeNull("the held write's bytes can never be delivered after the reset");
            IsConventional(held!).Should().BeTrue("not {0}", held);
            Exception? reading = await Outcome(read, Guard);
            reading.Should().NotBeNull("a reset is not an orderly end");
            IsConventional(reading!).Should().BeTrue("not {0}", reading);
            await bystander.AssertEchoesAsync(100_000, 20);
        }
    }

    [Fact]
    public async Task Disposing_the_Socket_under_a_live_TLS_connection_over_Unix_domain_sockets_fails_both_ends_conventionally()
    {
        await using var io = new IoTestContext();
        await using Bystander bystander = await Bystander.StartAsync(io);
        string path = Path.Combine(Path.GetTempPath(), $"adv-tls-{Guid.NewGuid():N}.sock");
        try
        {
            (ReactorSocket clientSocket, ReactorSocket serverSocket) = await ConnectAsync(io, new UnixDomainSocketEndPoint(path));
            var server = ReactorConnection.Create(serverSocket, Options(io, 4096, 2048), Options(io, 4096, 2048));
            await using var disposeServer = IoTestContext.DisposeWithin(server);
            var client = ReactorConnection.Create(clientSocket, Options(io, 4096, 2048), Options(io, 4096, 2048));
            await using var disposeClient = IoTestContext.DisposeWithin(client);

            Task<SslStream> serverTls = ServerHandshake(io, server);
            SslStream clientTls = await io.Run(async () =>
            {
                var tls = new SslStream(new DuplexPipeStream(client), leaveInnerStreamOpen: false);
                await tls.AuthenticateAsClientAsync(ClientOptions);
                return tls;
            }, Guard);
            SslStream serverStream = await serverTls.WaitAsync(Guard);

            // Both sides stream at each other; the server reads slowly so that unread data sits in its socket.
            byte[] chunk = IoTestContext.Pattern(64 << 10, 21);
            Task<Exception?> clientWriting = io.Run(async () =>
            {
                try
                {
                    for (int i = 0; i < 4096; i++)
                    {
                        await clientTls.WriteAsync(chunk);
                    }

                    return null;
                }
                catch (Exception e)
                {
                    return e;
                }
            }, TimeSpan.FromSeconds(60));
            Task<Exception?> clientReading = io.Run(async () =>
            {
                try
                {
                    var buffer = new byte[16 << 10];
                    while (await clientTls.ReadAsync(buffer) > 0)
                    {
                    }

                    return null;
                }
                catch (Exception e)
                {
                    return e;
                }
            }, TimeSpan.FromSeconds(60));
            Task<Exception?> serverReading = io.Run(async () =>
            {
                try
                {
                    var buffer = new byte[1000];
                    long total = 0;
                    int n;
                    while ((n = await serverStream.ReadAsync(buffer)) > 0)
                    {
                        total += n;
                        if (total > (1 << 20))
                        {
                            await Task.Delay(1);
                        }
                    }

                    return null;
                }
                catch (Exception e)
                {
                    return e;
                }
            }, TimeSpan.FromSeconds(60));
            await Task.Delay(300);

            // Misuse on purpose: the socket disposed under the running connection (unread input: the peer sees a reset).
            server.Socket.Dispose();

            Exception? serverEnd = await serverReading.WaitAsync(Guard);
            string diag = "";
            if (serverEnd is null)
            {
                diag = await io.Run(async () =>
                {
                    try
                    {
                        ReadResult r = await server.Input.ReadAsync();
                        return $"Input: completed={r.IsCompleted} len={r.Buffer.Length}";
                    }
                    catch (Exception e)
                    {
                        return "Input threw " + e;
                    }
                }, Guard);
            }

            serverEnd.Should().NotBeNull(diag + ": our own socket was disposed under the reader; that is not the peer's orderly end");
            IsConventional(serverEnd!).Should().BeTrue("not {0}", serverEnd);
            Exception? writerEnd = await clientWriting.WaitAsync(Guard);
            writerEnd.Should().NotBeNull("the client's endless writes cannot all succeed once the server's socket is gone");
            IsConventional(writerEnd!).Should().BeTrue("not {0}", writerEnd);
            Exception? readerEnd = await clientReading.WaitAsync(Guard);
            (readerEnd is null || IsConventional(readerEnd)).Should().BeTrue("not {0}", readerEnd);

            // Each disposal is timed to its completion, on the thread that completes it: the test's resumption after each
            // await waits for a pool or xunit thread, which a loaded run hands out seconds late.
            TimeSpan disposing = await Timed.UntilCompleted(() => server.DisposeAsync().AsTask(), Guard)
                + await Timed.UntilCompleted(() => client.DisposeAsync().AsTask(), Guard);
            disposing.Should().BeLessThan(TimeSpan.FromSeconds(5));
            await bystander.AssertEchoesAsync(100_000, 22);
        }
        finally
        {
            File.Delete(path);
        }
    }

    // ------------------------------------------------------------------------------------------------------------
    // The AsStream adapters: leaveOpen, disposal completing the pipes, disposal while a write is held.
    // ------------------------------------------------------------------------------------------------------------

    [Fact]
    public async Task AsStream_with_leaveOpen_keeps_both_pipes_usable_and_every_byte_in_order()
    {
        await using var io = new IoTestContext();
        (ReactorConnection connection, Socket plain) = await PlainPeerAsync(io);
        await using var disposeConnection = IoTestContext.DisposeWithin(connection);
        using (plain)
        {
            byte[] first = IoTestContext.Pattern(100_000, 10);
            byte[] second = IoTestContext.Pattern(50_000, 11);
            byte[] third = IoTestContext.Pattern(7, 12);
            var peerReceived = new byte[first.Length + second.Length + third.Length];
            Task peerReading = IoTestContext.ReceiveExactlyAsync(plain, peerReceived);

            await io.Run(async () =>
            {
                await using (Stream output = connection.Output.AsStream(leaveOpen: true))
                {
                    await output.WriteAsync(first);
                }

                // leaveOpen: the writer is not completed, the pipe still takes writes. (Not a second AsStream(leaveOpen:
                // false) here: System.IO.Pipelines caches the first stream and returns it, leaveOpen and all.)
                await connection.Output.WriteAsync(second);
                await connection.Output.WriteAsync(third);
                await connection.Output.CompleteAsync();
            }, Guard);

            await peerReading.WaitAsync(Guard);
            peerReceived.Should().Equal(first.Concat(second).Concat(third));
            (await plain.ReceiveAsync(new byte[1].AsMemory()).AsTask().WaitAsync(Guard)).Should().Be(0, "completing Output ends our stream");

            // Input: a stream with leaveOpen reads part; the pipe delivers the rest in order; without leaveOpen it completes Input.
            byte[] inbound = IoTestContext.Pattern(200_000, 13);
            await plain.SendAsync(inbound).WaitAsync(Guard);
            plain.Shutdown(SocketShutdown.Send);
            byte[] got = await io.Run(async () =>
            {
                var all = new MemoryStream();
                await using (Stream input = connection.Input.AsStream(leaveOpen: true))
                {
                    var buffer = new byte[1234];
                    while (all.Length < 50_000)
                    {
                        int n = await input.ReadAsync(buffer);
                        n.Should().BePositive();
                        all.Write(buffer, 0, n);
                    }
                }

                all.Write(await ReactorConnectionTests.ReadToEndAsync(connection.Input));
                return all.ToArray();
            }, Guard);
            got.Should().Equal(inbound);
        }
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task Disposing_an_output_stream_without_leaveOpen_completes_Output_with_every_byte_then_a_FIN(bool synchronousDispose)
    {
        await using var io = new IoTestContext();
        (ReactorConnection connection, Socket plain) = await PlainPeerAsync(io);
        await using var disposeConnection = IoTestContext.DisposeWithin(connection);
        using (plain)
        {
            byte[] message = IoTestContext.Pattern(150_000, 19);
            var peerReceived = new byte[message.Length];
            Task peerReading = IoTestContext.ReceiveExactlyAsync(plain, peerReceived);
            await io.Run(async () =>
            {
                Stream output = connection.Output.AsStream(leaveOpen: false);
                await output.WriteAsync(message);
                if (synchronousDispose)
                {
                    output.Dispose();
                }
                else
                {
                    await output.DisposeAsync();
                }
            }, Guard);
            await peerReading.WaitAsync(Guard);
            peerReceived.Should().Equal(message);
            (await plain.ReceiveAsync(new byte[1].AsMemory()).AsTask().WaitAsync(Guard)).Should().Be(0, "the stream's disposal completed Output");
        }
    }

    [Fact]
    public async Task Disposing_an_output_stream_while_its_write_is_held_by_backpressure_still_delivers_everything_and_a_FIN()
    {
        await using var io = new IoTestContext();
        (ReactorConnection connection, Socket plain) = await PlainPeerAsync(io, Options(io, 16 << 10, 8 << 10));
        await using var disposeConnection = IoTestContext.DisposeWithin(connection);
        using (plain)
        {
            plain.ReceiveBufferSize = 64 << 10;
            byte[] big = IoTestContext.Pattern(12 << 20, 14);
            Stream output = connection.Output.AsStream(leaveOpen: false);
            Task write = io.Run(() => output.WriteAsync(big).AsTask(), TimeSpan.FromSeconds(60));
            await Task.Delay(300);
            write.IsCompleted.Should().BeFalse("12 MB cannot fit into a peer that does not read");
            Task disposing = io.Run(() => output.DisposeAsync().AsTask(), TimeSpan.FromSeconds(60)); // completes Output behind the held write

            var received = new byte[big.Length];
            await IoTestContext.ReceiveExactlyAsync(plain, received).WaitAsync(TimeSpan.FromSeconds(20));
            await Outcome(write, Guard);
            await Outcome(disposing, Guard);
            received.AsSpan().SequenceEqual(big).Should().BeTrue();
            (await plain.ReceiveAsync(new byte[1].AsMemory()).AsTask().WaitAsync(Guard)).Should().Be(0, "the completed Output ends with our FIN");
        }
    }

    [Fact]
    public async Task Disposing_the_input_stream_while_the_peer_keeps_sending_hangs_neither_the_peer_nor_DisposeAsync()
    {
        await using var io = new IoTestContext();
        await using Bystander bystander = await Bystander.StartAsync(io);
        (ReactorConnection connection, Socket plain) = await PlainPeerAsync(io, Options(io, 8 << 10, 4 << 10));
        using (plain)
        {
            Task<int> peerSending = plain.SendAsync(new byte[16 << 20]);
            await io.Run(async () =>
            {
                Stream input = connection.Input.AsStream(leaveOpen: false);
                var buffer = new byte[4096];
                (await input.ReadAsync(buffer)).Should().BePositive();
                await input.DisposeAsync(); // completes Input: the receive loop stops, the peer's send fills the window
            }, Guard);

            // Timed to the disposal's completion, on the thread that completes it: the test's resumption after the await
            // waits for a pool or xunit thread, which a loaded run hands out seconds late.
            (await Timed.UntilCompleted(() => connection.DisposeAsync().AsTask(), Guard)).Should().BeLessThan(TimeSpan.FromSeconds(5));
            Exception? peer = await Outcome(peerSending, Guard);
            (peer is null || peer is SocketException).Should().BeTrue("the peer's send ends (delivered or reset), not {0}", peer);
            await bystander.AssertEchoesAsync(100_000, 15);
        }
    }

    // ------------------------------------------------------------------------------------------------------------
    // Cancellation and AdvanceTo misuse through the stream adapters and the pipes.
    // ------------------------------------------------------------------------------------------------------------

    [Fact]
    public async Task CancelPendingRead_on_Input_fails_only_the_streams_current_read_and_loses_no_byte_of_a_large_transfer()
    {
        await using var io = new IoTestContext();
        (ReactorConnection connection, Socket plain) = await PlainPeerAsync(io, Options(io, 4096, 1024));
        await using var disposeConnection = IoTestContext.DisposeWithin(connection);
        using (plain)
        {
            byte[] message = IoTestContext.Pattern(4 << 20, 16);
            Task peerSending = Task.Run(async () =>
            {
                await plain.SendAsync(message);
                plain.Shutdown(SocketShutdown.Send);
            });

            int cancelled = 0;
            using var stop = new CancellationTokenSource();
            Task canceller = Task.Run(async () =>
            {
                while (!stop.IsCancellationRequested)
                {
                    connection.Input.CancelPendingRead();
                    await Task.Yield();
                }
            });

            byte[] got = await io.Run(async () =>
            {
                Stream input = connection.Input.AsStream(leaveOpen: true);
                var all = new MemoryStream();
                var buffer = new byte[3000];
                while (true)
                {
                    int n;
                    try
                    {
                        n = await input.ReadAsync(buffer);
                    }
                    catch (OperationCanceledException)
                    {
                        cancelled++;
                        continue;
                    }

                    if (n == 0)
                    {
                        return all.ToArray();
                    }

                    all.Write(buffer, 0, n);
                }
            }, TimeSpan.FromSeconds(20));
            stop.Cancel();
            await canceller.WaitAsync(Guard);
            await peerSending.WaitAsync(Guard);
            got.AsSpan().SequenceEqual(message).Should().BeTrue("a cancelled read consumes nothing ({0} reads were cancelled)", cancelled);
        }
    }

    [Fact]
    public async Task AdvanceTo_and_Advance_misuse_throw_the_conventional_exceptions_and_the_connection_keeps_delivering()
    {
        await using var io = new IoTestContext();
        (ReactorConnection connection, Socket plain) = await PlainPeerAsync(io);
        await using var disposeConnection = IoTestContext.DisposeWithin(connection);
        using (plain)
        {
            byte[] message = IoTestContext.Pattern(10_000, 17);
            await plain.SendAsync(message).WaitAsync(Guard);
            await io.Run(async () =>
            {
                ReadResult result = await connection.Input.ReadAsync();
                while (result.Buffer.Length < 100)
                {
                    connection.Input.AdvanceTo(result.Buffer.Start, result.Buffer.End);
                    result = await connection.Input.ReadAsync();
                }

                ReadOnlySequence<byte> buffer = result.Buffer;

                // consumed beyond examined
                Action backwards = () => connection.Input.AdvanceTo(buffer.GetPosition(50), buffer.GetPosition(10));
                backwards.Should().Throw<InvalidOperationException>();

                // End that read properly (the pipe may or may not still count it as in progress after the refusal).
                try
                {
                    connection.Input.AdvanceTo(buffer.Start, buffer.GetPosition(60));
                }
                catch (InvalidOperationException)
                {
                }

                // AdvanceTo with no read in progress; ReadAsync with one in progress.
                ReadResult second = await connection.Input.ReadAsync();
                connection.Input.AdvanceTo(second.Buffer.Start);
                Action twice = () => connection.Input.AdvanceTo(second.Buffer.Start);
                twice.Should().Throw<InvalidOperationException>();
                ReadResult third = await connection.Input.ReadAsync();
                Func<Task> nested = async () => await connection.Input.ReadAsync();
                await nested.Should().ThrowAsync<InvalidOperationException>();
                connection.Input.AdvanceTo(third.Buffer.Start);

                // Output: advancing beyond what GetMemory gave
                Memory<byte> memory = connection.Output.GetMemory(16);
                Action over = () => connection.Output.Advance(memory.Length + 1);
                over.Should().Throw<ArgumentOutOfRangeException>();

                return 0;
            }, Guard);

            // After the misuse the connection still delivers every byte in both directions.
            byte[] rest = IoTestContext.Pattern(300_000, 18);
            Task peerSend = Task.Run(async () =>
            {
                await plain.SendAsync(rest);
                plain.Shutdown(SocketShutdown.Send);
            });
            byte[] got = await io.Run(() => ReactorConnectionTests.ReadToEndAsync(connection.Input), Guard);
            await peerSend.WaitAsync(Guard);
            got.Should().Equal(message.Concat(rest));

            var back = new byte[5];
            Task receiving = IoTestContext.ReceiveExactlyAsync(plain, back);
            await io.Run(async () =>
            {
                await connection.Output.WriteAsync(new byte[] { 1, 2, 3, 4, 5 });
            }, Guard);
            await receiving.WaitAsync(Guard);
            back.Should().Equal(1, 2, 3, 4, 5);
        }
    }

    // ------------------------------------------------------------------------------------------------------------
    // Helpers: a stream that cuts a TLS exchange short.
    // ------------------------------------------------------------------------------------------------------------

    /// <summary>
    /// A plain socket's stream that passes writes through until its budget (bytes, and writes) runs out, then cuts: resets
    /// the connection, shuts its send side down, or just stops sending; the write that hit the budget then throws.
    /// </summary>
    private sealed class CuttingStream(Socket socket, Cut cut) : Stream
    {
        private readonly NetworkStream _inner = new(socket, ownsSocket: false);
        private long _budget = long.MaxValue;
        private int _writes = int.MaxValue;

        public TaskCompletionSource CutDone { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);

        /// <summary>What the write that hit the budget did not send.</summary>
        public byte[] Remainder { get; private set; } = [];

        public void Arm(long budget, int writes)
        {
            _budget = budget;
            _writes = writes;
        }

        public override bool CanRead => true;

        public override bool CanWrite => true;

        public override bool CanSeek => false;

        public override long Length => throw new NotSupportedException();

        public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }

        public override ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default) =>
            CutDone.Task.IsCompleted && cut == Cut.Reset ? ValueTask.FromResult(0) : _inner.ReadAsync(buffer, cancellationToken);

        public override Task<int> ReadAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) =>
            ReadAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();

        public override async ValueTask WriteAsync(ReadOnlyMemory<byte> buffer, CancellationToken cancellationToken = default)
        {
            if (CutDone.Task.IsCompleted)
            {
                throw new IOException("the test cut this stream");
            }

            if (_writes > 0 && buffer.Length <= _budget)
            {
                _writes--;
                _budget -= buffer.Length;
                await _inner.WriteAsync(buffer, cancellationToken);
                return;
            }

            int keep = _writes > 0 ? (int)_budget : 0;
            if (keep > 0)
            {
                await _inner.WriteAsync(buffer[..keep], cancellationToken);
            }

            Remainder = buffer[keep..].ToArray();

            switch (cut)
            {
                case Cut.Reset:
                    socket.LingerState = new LingerOption(true, 0);
                    socket.Close();
                    break;
                case Cut.Fin:
                    socket.Shutdown(SocketShutdown.Send);
                    break;
                case Cut.Silence:
                    break;
            }

            CutDone.TrySetResult();
            throw new IOException("the test cut this stream");
        }

        public override Task WriteAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) =>
            WriteAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();

        public override Task FlushAsync(CancellationToken cancellationToken) => Task.CompletedTask;

        public override int Read(byte[] buffer, int offset, int count) => throw new NotSupportedException("asynchronous use only");

        public override void Write(byte[] buffer, int offset, int count) => throw new NotSupportedException("asynchronous use only");

        public override void Flush()
        {
        }

        public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();

        public override void SetLength(long value) => throw new NotSupportedException();

        protected override void Dispose(bool disposing)
        {
            if (disposing)
            {
                _inner.Dispose();
            }

            base.Dispose(disposing);
        }
    }
}
