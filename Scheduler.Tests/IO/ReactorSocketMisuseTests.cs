using System.Net.Sockets;
using Scheduler.IO;

namespace Scheduler.Tests.IO;

/// <summary>
/// Each misuse of a <see cref="ReactorSocket"/> is refused with the conventional exception type and a message that says
/// what was wrong, and leaves the socket as it was. The mutation run over <c>ReactorSocket.cs</c> (session 50) found no
/// test that read one of these messages: an empty one passed the whole suite.
/// </summary>
public sealed class ReactorSocketMisuseTests
{
    [Fact]
    public async Task A_listener_refuses_receives_and_sends_and_a_connected_socket_refuses_accepts_each_saying_why()
    {
        await using var io = new IoTestContext();
        using ReactorSocket listener = io.Listen();

        (await CaughtAsync(() => listener.ReceiveAsync(new byte[1]))).Should().BeOfType<InvalidOperationException>()
            .Which.Message.Should().Match("A listening socket cannot receive*AcceptAsync*");
        (await CaughtAsync(() => listener.SendAsync(new byte[1]))).Should().BeOfType<InvalidOperationException>()
            .Which.Message.Should().Be("A listening socket cannot send.");
        (await CaughtAsync(() => listener.SendAsync(new System.Buffers.ReadOnlySequence<byte>(new byte[1]))))
            .Should().BeOfType<InvalidOperationException>().Which.Message.Should().Be("A listening socket cannot send.");

        await io.RunOnPair(listener, async (client, server) =>
        {
            (await CaughtAsync(() => client.AcceptAsync())).Should().BeOfType<InvalidOperationException>()
                .Which.Message.Should().Match("Only a socket created with Listen can accept*");

            // None of the refusals touched either socket.
            await IoTestContext.AssertByteCrossesAsync(client, server, 1);
            await IoTestContext.AssertByteCrossesAsync(server, client, 2);
        });
    }

    [Fact]
    public async Task A_second_operation_in_the_same_direction_is_refused_naming_it_and_the_first_one_goes_on()
    {
        await using var io = new IoTestContext();
        using ReactorSocket listener = io.Listen();
        await io.RunOnPair(listener, async (client, server) =>
        {
            ValueTask<ReactorSocket> accept = listener.AcceptAsync();
            accept.IsCompleted.Should().BeFalse("nobody connects");
            (await CaughtAsync(() => listener.AcceptAsync())).Should().BeOfType<InvalidOperationException>()
                .Which.Message.Should().Match("An accept is already in progress*only one accept*");

            var received = new byte[1];
            ValueTask<int> receive = server.ReceiveAsync(received);
            receive.IsCompleted.Should().BeFalse("nothing was sent yet");
            (await CaughtAsync(() => server.ReceiveAsync(new byte[1]))).Should().BeOfType<InvalidOperationException>()
                .Which.Message.Should().Match("A receive is already in progress*only one receive*");

            // A send larger than both kernel buffers, to a peer that does not read, stays in flight.
            byte[] large = IoTestContext.Pattern(32 << 20, 3);
            ValueTask<int> send = client.SendAsync(large);
            send.IsCompleted.Should().BeFalse("the peer reads nothing yet");
            (await CaughtAsync(() => client.SendAsync(new byte[1]))).Should().BeOfType<InvalidOperationException>()
                .Which.Message.Should().Match("A send is already in progress*only one send*");
            (await CaughtAsync(() => client.SendAsync(new System.Buffers.ReadOnlySequence<byte>(new byte[1]))))
                .Should().BeOfType<InvalidOperationException>().Which.Message.Should().Match("A send is already in progress*");

            // The first of each goes on: the large send arrives whole, and the receive and the accept complete.
            (await receive).Should().Be(1);
            received[0].Should().Be(large[0]);
            var rest = new byte[large.Length - 1];
            await IoTestContext.ReceiveExactlyAsync(server, rest);
            rest.AsSpan().SequenceEqual(large.AsSpan(1)).Should().BeTrue("the refused receive took nothing");
            (await send).Should().Be(large.Length);

            using ReactorSocket third = await ReactorSocket.ConnectAsync(io.Reactor, listener.LocalEndPoint!);
            using ReactorSocket accepted = await accept;
            await IoTestContext.AssertByteCrossesAsync(third, accepted, 4);
        });
    }

    [Fact]
    public async Task Every_operation_on_a_disposed_socket_says_the_socket_has_been_disposed_even_with_a_cancelled_token()
    {
        await using var io = new IoTestContext();
        using ReactorSocket listener = io.Listen();
        (ReactorSocket client, ReactorSocket server) = await io.ConnectPairOnSchedulerAsync(listener);
        server.Dispose();
        client.Dispose();
        listener.Dispose();

        const string Disposed = "The socket has been disposed.*";
        (await CaughtAsync(() => listener.AcceptAsync())).Should().BeOfType<ObjectDisposedException>().Which.Message.Should().Match(Disposed);
        (await CaughtAsync(() => client.ReceiveAsync(new byte[1]))).Should().BeOfType<ObjectDisposedException>().Which.Message.Should().Match(Disposed);
        (await CaughtAsync(() => client.SendAsync(new byte[1]))).Should().BeOfType<ObjectDisposedException>().Which.Message.Should().Match(Disposed);
        (await CaughtAsync(() => client.SendAsync(new System.Buffers.ReadOnlySequence<byte>(new byte[1]))))
            .Should().BeOfType<ObjectDisposedException>().Which.Message.Should().Match(Disposed);
        client.Invoking(s => s.Shutdown(SocketShutdown.Send)).Should().Throw<ObjectDisposedException>().WithMessage(Disposed);
        client.UnacknowledgedSendBytes().Should().Be(0);
        client.IsReceiveSideShut().Should().BeFalse();

        // The disposal is reported before a cancellation, as System.Net.Sockets.Socket reports it.
        using var cancelled = new CancellationTokenSource();
        cancelled.Cancel();
        (await CaughtAsync(() => listener.AcceptAsync(cancelled.Token))).Should().BeOfType<ObjectDisposedException>();
        (await CaughtAsync(() => client.ReceiveAsync(new byte[1], cancelled.Token))).Should().BeOfType<ObjectDisposedException>();
        (await CaughtAsync(() => client.SendAsync(new byte[1], cancelled.Token))).Should().BeOfType<ObjectDisposedException>();
        (await CaughtAsync(() => client.SendAsync(new System.Buffers.ReadOnlySequence<byte>(new byte[1]), cancelled.Token)))
            .Should().BeOfType<ObjectDisposedException>();
    }

    [Fact]
    public async Task The_remote_endpoint_of_a_connection_reset_before_it_was_first_read_is_null()
    {
        await using var io = new IoTestContext();
        using ReactorSocket listener = io.Listen();
        using ReactorSocket socket = await io.AcceptConnectionResetByPeerAsync(listener);
        Func<Task> receive = () => io.Run(async () => await socket.ReceiveAsync(new byte[8]));
        (await receive.Should().ThrowAsync<SocketException>()).Which.SocketErrorCode.Should().Be(SocketError.ConnectionReset);

        // The kernel no longer has a peer to tell (getpeername says ENOTCONN): no made-up address stands for it.
        socket.RemoteEndPoint.Should().BeNull();
        socket.LocalEndPoint.Should().Be(listener.LocalEndPoint, "the local address outlives the connection");
    }

    [Fact]
    public async Task Shutdown_with_an_undefined_direction_names_the_parameter_and_the_values_it_takes()
    {
        await using var io = new IoTestContext();
        using ReactorSocket listener = io.Listen();
        listener.Invoking(l => l.Shutdown((SocketShutdown)42)).Should().Throw<ArgumentOutOfRangeException>()
            .WithMessage("Expected Receive, Send or Both.*").Which.ParamName.Should().Be("how");
    }

    private static async Task<Exception?> CaughtAsync<T>(Func<ValueTask<T>> operation)
    {
        try
        {
            await operation();
            return null;
        }
        catch (Exception exception)
        {
            return exception;
        }
    }
}
