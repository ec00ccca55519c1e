using System.Net.Sockets;
using System.Text;
using Scheduler.IO;

namespace Scheduler.Tests.IO;

/// <summary>
/// A receive that came back short proves the socket drained, so the next receive waits for the next edge without a
/// system call. These tests pin down that it still sees everything: more data, and the conditions a short read does
/// not reveal (an end of stream or a reset queued behind the data, urgent data).
/// </summary>
public sealed class DrainedReceiveTests
{
    // A receive that misses its data stays pending for good; a loaded run can hold a step off its core for seconds.
    private static readonly TimeSpan Bound = TimeSpan.FromSeconds(10);

    // How long the peer's bytes sit before our first receive: 0 races the reactor, 30 ms lets it handle every edge
    // first (the case where a wrongly skipped receive would never see another edge).
    public static TheoryData<int> Delays => new() { 0, 1, 30 };

    // The same over TCP (false) and Unix domain sockets (true), which have no queued-byte report.
    public static TheoryData<int, bool> DelaysAndFamilies => new()
    {
        { 0, false }, { 1, false }, { 30, false },
        { 0, true }, { 30, true },
    };

    [Theory]
    [InlineData(false, 4096)]
    [InlineData(false, 64)]
    [InlineData(true, 4096)]
    [InlineData(true, 64)]
    public async Task Request_response_skips_the_receive_that_would_say_EAGAIN_and_loses_nothing(bool unixDomain, int bufferSize)
    {
        // 64-byte messages echoed back and forth. Read into a larger buffer, each read comes back short, which proves
        // the socket drained; read into exactly 64 bytes, each read fills its buffer, and only TCP's queued-byte report
        // (TCP_INQ) still proves it: a Unix domain socket has no such report, and a full read proves nothing there.
        const int Rounds = 300;
        string path = NewSocketPath();
        await using var io = new IoTestContext();
        using ReactorSocket listener = Listen(io, unixDomain, path);
        (ReactorSocket client, ReactorSocket server) = await io.ConnectPairOnSchedulerAsync(listener);
        using (client)
        using (server)
        {
            await io.Run(async () =>
            {
                Task echo = Task.Run(async () =>
                {
                    var buffer = new byte[bufferSize];
                    for (int i = 0; i < Rounds; i++)
                    {
                        await ReceiveMessageAsync(server, buffer);
                        await server.SendAsync(buffer.AsMemory(0, 64));
                    }
                });

                var reply = new byte[bufferSize];
                for (int i = 0; i < Rounds; i++)
                {
                    byte[] message = IoTestContext.Pattern(64, i);
                    await client.SendAsync(message);
                    await ReceiveMessageAsync(client, reply);
                    reply.AsSpan(0, 64).ToArray().Should().Equal(message);
                }

                await echo;
            });

            // Each side's receive after a drained read waits for the edge directly, unless an edge came first.
            int skipped = client.ReceiveAttemptsSkipped + server.ReceiveAttemptsSkipped;
            if (unixDomain && bufferSize == 64)
            {
                skipped.Should().Be(0);
            }
            else
            {
                skipped.Should().BeGreaterThan(Rounds / 2);
            }
        }

        File.Delete(path);

        static async Task ReceiveMessageAsync(ReactorSocket socket, Memory<byte> buffer)
        {
            int total = 0;
            while (total < 64)
            {
                int n = await socket.ReceiveAsync(buffer[total..]);
                n.Should().BePositive();
                total += n;
            }

            total.Should().Be(64);
        }
    }

    [Fact]
    public async Task A_full_read_proves_nothing_and_the_rest_is_read_without_an_edge()
    {
        await using var io = new IoTestContext();
        using ReactorSocket listener = io.Listen();
        (ReactorSocket client, ReactorSocket server) = await io.ConnectPairOnSchedulerAsync(listener);
        using (client)
        using (server)
        {
            byte[] message = IoTestContext.Pattern(1000, 3);
            await io.Run(async () =>
            {
                await client.SendAsync(message);
                await Task.Delay(30);

                // 1,000 bytes queued, read 100 at a time: every read fills its buffer, so each next one must try.
                var received = new List<byte>();
                var buffer = new byte[100];
                while (received.Count < message.Length)
                {
                    int n = await server.ReceiveAsync(buffer).AsTask().WaitAsync(Bound);
                    received.AddRange(buffer.AsSpan(0, n).ToArray());
                }

                received.Should().Equal(message);
            });
        }
    }

    [Theory]
    [MemberData(nameof(DelaysAndFamilies))]
    public Task End_of_stream_queued_behind_the_data_is_seen_after_a_short_read(int delayMs, bool unixDomain) =>
        // Over TCP the kernel's queued-byte report counts a pending end of stream as a byte; a Unix domain socket has
        // no report, and there only the reactor's record of the hang-up keeps the next receive from skipping.
        ForEachConnectionAsync(unixDomain, async (io, peer, ours) =>
        {
            // Data and FIN leave together, before our receive: the short read cannot tell that the FIN is there.
            peer.Send(Encoding.ASCII.GetBytes("0123456789"));
            peer.Shutdown(SocketShutdown.Send);

            (string text, bool ended) = await io.Run(() => ReadToEndAsync(ours, delayMs));
            text.Should().Be("0123456789");
            ended.Should().BeTrue();
        });

    [Theory]
    [MemberData(nameof(Delays))]
    public Task A_reset_queued_behind_the_data_is_seen_after_a_short_read(int delayMs) =>
        ForEachConnectionAsync(unixDomain: false, async (io, peer, ours) =>
        {
            peer.Send(Encoding.ASCII.GetBytes("0123456789"));
            peer.LingerState = new LingerOption(true, 0);
            peer.Close(); // RST

            Exception? failure = await io.Run(async () =>
            {
                try
                {
                    await ReadToEndAsync(ours, delayMs);
                    return null;
                }
                catch (SocketException e)
                {
                    return e;
                }
            });

            // Linux drops the queued data on a reset, or delivers it first: either way the receive ends.
            failure.Should().BeOfType<SocketException>().Which.SocketErrorCode.Should().Be(SocketError.ConnectionReset);
        });

    [Theory]
    [MemberData(nameof(DelaysAndFamilies))]
    public Task Urgent_data_does_not_stall_the_stream(int delayMs, bool unixDomain) =>
        // Unix domain stream sockets have urgent data too (Linux 5.15 and later), with the same mark.
        ForEachConnectionAsync(unixDomain, async (io, peer, ours) =>
        {
            // A receive stops short at the urgent mark with "def" still queued, and no later edge announces it.
            peer.Send(Encoding.ASCII.GetBytes("abc"));
            peer.Send(Encoding.ASCII.GetBytes("X"), SocketFlags.OutOfBand);
            peer.Send(Encoding.ASCII.GetBytes("def"));

            string text = await io.Run(async () =>
            {
                await Task.Delay(delayMs);
                var received = new StringBuilder();
                var buffer = new byte[1024];
                while (received.Length < 6)
                {
                    int n = await ours.ReceiveAsync(buffer).AsTask().WaitAsync(Bound);
                    n.Should().BePositive();
                    received.Append(Encoding.ASCII.GetString(buffer, 0, n));
                }

                return received.ToString();
            });

            // The urgent byte is out of band (not inline): the stream is the rest.
            text.Should().Be("abcdef");
        });

    [Theory]
    [MemberData(nameof(Delays))]
    public Task Descriptors_passed_by_a_Unix_domain_peer_do_not_stall_the_stream(int delayMs) =>
        ForEachConnectionAsync(unixDomain: true, async (io, peer, ours) =>
        {
            // A Unix domain read stops right after bytes that carried descriptors (SCM_RIGHTS), with the rest still
            // queued and no later edge to announce it: that short read proves nothing.
            SendWithDescriptor(peer, Encoding.ASCII.GetBytes("abc"));
            peer.Send(Encoding.ASCII.GetBytes("def"));

            string text = await io.Run(async () =>
            {
                await Task.Delay(delayMs);
                var received = new StringBuilder();
                var buffer = new byte[1024];
                while (received.Length < 6)
                {
                    int n = await ours.ReceiveAsync(buffer).AsTask().WaitAsync(Bound);
                    n.Should().BePositive();
                    received.Append(Encoding.ASCII.GetString(buffer, 0, n));
                }

                return received.ToString();
            });

            text.Should().Be("abcdef");
        });

    /// <summary>sendmsg(2) of <paramref name="data"/> with one descriptor (the peer's own) attached as SCM_RIGHTS.</summary>
    private static unsafe void SendWithDescriptor(Socket peer, byte[] data)
    {
        const int ScmRights = 1;
        byte* control = stackalloc byte[24]; // CMSG_SPACE(sizeof(int)) on LP64
        new Span<byte>(control, 24).Clear();
        *(ulong*)control = 20; // CMSG_LEN(sizeof(int))
        *(int*)(control + 8) = Scheduler.Native.LinuxConstants.SOL_SOCKET;
        *(int*)(control + 12) = ScmRights;
        int fd = (int)peer.SafeHandle.DangerousGetHandle();
        *(int*)(control + 16) = fd;
        fixed (byte* bytes = data)
        {
            Scheduler.Native.Libc.IoVector vector = default;
            vector.Base = bytes;
            vector.Length = (nuint)data.Length;
            Scheduler.Native.Libc.MessageHeader message = default;
            message.IoVectors = &vector;
            message.IoVectorCount = 1;
            message.Control = control;
            message.ControlLength = 24;
            Scheduler.Native.Libc.SendMsg(fd, &message, 0).Should().Be(data.Length);
        }
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task Bulk_transfer_to_a_slow_reader_with_random_buffer_sizes_never_stalls(bool unixDomain)
    {
        // The window fills while the reader dawdles and reopens as it reads: every window update must still go
        // out although receives after drained reads skip their system call. Short and full reads alternate at random.
        const int Length = 8 * 1024 * 1024;
        byte[] data = IoTestContext.Pattern(Length, 11);
        string path = NewSocketPath();
        await using var io = new IoTestContext();
        using ReactorSocket listener = Listen(io, unixDomain, path);
        using Socket peer = NewPeer(unixDomain);
        using ReactorSocket ours = await io.AcceptConnectedAsync(listener, peer);
        Task send = Task.Run(() =>
        {
            peer.Send(data);
            peer.Shutdown(SocketShutdown.Send);
        });

        byte[] received = await io.Run(async () =>
        {
            var random = new Random(5);
            var output = new MemoryStream(Length);
            var buffer = new byte[64 * 1024];
            int reads = 0;
            while (true)
            {
                int n = await ours.ReceiveAsync(buffer.AsMemory(0, random.Next(1, buffer.Length + 1))).AsTask().WaitAsync(Bound);
                if (n == 0)
                {
                    return output.ToArray();
                }

                output.Write(buffer, 0, n);
                if (++reads % 16 == 0)
                {
                    await Task.Delay(1);
                }
            }
        });

        await send.WaitAsync(Bound);
        received.Length.Should().Be(Length);
        received.AsSpan().SequenceEqual(data).Should().BeTrue();
        File.Delete(path);
    }

    /// <summary>Ten rounds, each on a fresh connection from a plain peer of the chosen family to one of ours.</summary>
    private static async Task ForEachConnectionAsync(bool unixDomain, Func<IoTestContext, Socket, ReactorSocket, Task> round)
    {
        string path = NewSocketPath();
        try
        {
            await using var io = new IoTestContext();
            using ReactorSocket listener = Listen(io, unixDomain, path);
            for (int i = 0; i < 10; i++)
            {
                using Socket peer = NewPeer(unixDomain);
                using ReactorSocket ours = await io.AcceptConnectedAsync(listener, peer);
                await round(io, peer, ours);
            }
        }
        finally
        {
            File.Delete(path);
        }
    }

    private static string NewSocketPath() => Path.Combine(Path.GetTempPath(), $"drained-{Guid.NewGuid():N}.sock");

    private static ReactorSocket Listen(IoTestContext io, bool unixDomain, string path) =>
        unixDomain ? io.Listen(new UnixDomainSocketEndPoint(path)) : io.Listen();

    /// <summary>A plain System.Net.Sockets peer of the family <see cref="Listen"/> chose.</summary>
    private static Socket NewPeer(bool unixDomain) =>
        unixDomain ? new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified) : IoTestContext.NewPlainSocket();

    /// <summary>Reads with a large buffer until end of stream; each receive must complete within <see cref="Bound"/>.</summary>
    private static async Task<(string Text, bool Ended)> ReadToEndAsync(ReactorSocket socket, int delayMs)
    {
        await Task.Delay(delayMs);
        var received = new StringBuilder();
        var buffer = new byte[1024];
        while (true)
        {
            int n = await socket.ReceiveAsync(buffer).AsTask().WaitAsync(Bound);
            if (n == 0)
            {
                return (received.ToString(), true);
            }

            received.Append(Encoding.ASCII.GetString(buffer, 0, n));
        }
    }
}
