using System.IO.Pipelines;
using System.Net.Sockets;
using Scheduler.IO;

namespace Scheduler.Tests.IO;

public sealed class ResetOrderingTests
{
    [Fact]
    public async Task A_reset_that_a_send_reports_first_still_ends_Input_with_the_error_not_an_end_of_stream()
    {
        await using var io = new IoTestContext();
        using ReactorSocket listener = io.Listen();
        using Socket peer = IoTestContext.NewPlainSocket();
        peer.ReceiveBufferSize = 64 << 10;
        var options = io.Bounded(8 << 10, 4 << 10);
        var connection = ReactorConnection.Create(await io.AcceptConnectedAsync(listener, peer), options, options);
        await using var disposeConnection = IoTestContext.DisposeWithin(connection);

        // The peer sends more than Input takes before it pauses: the receive loop waits on backpressure, not in recv.
        await peer.SendAsync(new byte[64 << 10].AsMemory());
        await Task.Delay(200);

        // The peer never reads: write until a flush waits (the send loop is parked on a full socket).
        Task<FlushResult> blocked = await io.WriteUntilPaused(connection);

        peer.LingerState = new LingerOption(true, 0);
        peer.Close(); // RST: only the parked send sees the edge, and its sendmsg takes the socket's error

        Func<Task> flushed = () => blocked.WaitAsync(IoTestContext.Timeout);
        (await flushed.Should().ThrowAsync<SocketException>()).Which.SocketErrorCode.Should().Be(SocketError.ConnectionReset);

        // The peer's stream was cut by the reset: Input must not report an orderly end after the bytes it holds.
        Func<Task> read = () => io.ReadInputToEnd(connection);
        (await read.Should().ThrowAsync<SocketException>()).Which.SocketErrorCode.Should().Be(SocketError.ConnectionReset);
    }

    [Fact]
    public async Task A_connection_that_timed_out_in_a_send_ends_Input_with_the_timeout_not_an_end_of_stream()
    {
        await using var io = new IoTestContext();
        using ReactorSocket listener = io.Listen();
        using Socket peer = IoTestContext.NewPlainSocket();
        peer.ReceiveBufferSize = 16 << 10;
        var options = io.Bounded(8 << 10, 4 << 10);
        ReactorSocket server = await io.AcceptConnectedAsync(listener, peer);
        SetUserTimeout(server, milliseconds: 300);
        var connection = ReactorConnection.Create(server, options, options);
        await using var disposeConnection = IoTestContext.DisposeWithin(connection);

        // As above, the receive loop waits on backpressure; the peer never reads, so its window closes and the kernel
        // probes it until TCP_USER_TIMEOUT aborts the connection with ETIMEDOUT, which the parked send takes.
        await peer.SendAsync(new byte[64 << 10].AsMemory());
        Task writing = io.Run(async () =>
        {
            var chunk = new byte[64 << 10];
            while (true)
            {
                await connection.Output.WriteAsync(chunk);
            }
        });

        Func<Task> flushed = () => writing.WaitAsync(IoTestContext.Timeout);
        (await flushed.Should().ThrowAsync<SocketException>()).Which.SocketErrorCode.Should().Be(SocketError.TimedOut);

        Func<Task> read = () => io.ReadInputToEnd(connection);
        (await read.Should().ThrowAsync<SocketException>()).Which.SocketErrorCode.Should().Be(SocketError.TimedOut);
    }

    private static unsafe void SetUserTimeout(ReactorSocket socket, int milliseconds)
    {
        const int TCP_USER_TIMEOUT = 18;
        using ReactorSocket.FdReference fd = socket.AddRef();
        Scheduler.Native.Libc.SetSockOpt(fd.Fd, Scheduler.Native.LinuxConstants.IPPROTO_TCP, TCP_USER_TIMEOUT, &milliseconds, sizeof(int)).Should().Be(0);
    }
}
