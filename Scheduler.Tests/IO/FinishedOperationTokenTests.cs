using System.Net.Sockets;
using Scheduler.IO;

namespace Scheduler.Tests.IO;

/// <summary>
/// Each socket reuses one operation object per direction, so what an operation kept of its caller's cancellation token
/// (the registration, and the token the reactor checks when it parks the operation again) must be gone once it is
/// finished: a token of an earlier receive or send (a per-request timeout, say) that fires later must never cancel the
/// operation that holds the object now.
/// </summary>
public sealed class FinishedOperationTokenTests
{
    private static readonly TimeSpan Bound = TimeSpan.FromSeconds(10);

    [Fact]
    public async Task The_token_of_a_finished_receive_firing_later_does_not_cancel_the_next_receive()
    {
        await using var io = new IoTestContext();
        using ReactorSocket listener = io.Listen();
        using Socket peer = IoTestContext.NewPlainSocket();
        using ReactorSocket ours = await io.AcceptConnectedAsync(listener, peer);
        var buffer = new byte[16];

        // The first receive parks with its token registered, then completes with data.
        using var first = new CancellationTokenSource();
        Task<int> receive = ours.ReceiveAsync(buffer, first.Token).AsTask();
        receive.IsCompleted.Should().BeFalse("nothing was sent yet, so the receive parks with its token");
        await peer.SendAsync(new byte[] { 1 });
        (await receive.WaitAsync(Bound)).Should().Be(1);

        // The next receive holds the same operation object, without a token; the first token fires meanwhile.
        Task<int> next = ours.ReceiveAsync(buffer).AsTask();
        next.IsCompleted.Should().BeFalse("nothing more was sent, so the receive parks");
        await first.CancelAsync();
        await peer.SendAsync(new byte[] { 2 });

        Exception? failure = await Record.ExceptionAsync(() => next.WaitAsync(Bound));
        failure.Should().BeNull("the second receive had no token: cancelling the first receive's token must not reach it");
        (await next).Should().Be(1);
        buffer[0].Should().Be(2);
    }

    [Fact]
    public async Task The_token_of_a_finished_send_firing_later_does_not_cancel_the_next_send_the_reactor_retries()
    {
        // Far more than the kernel buffers of both ends can take: each send parks, and the reactor's retries, as the
        // peer reads, mostly end on EAGAIN and park it again (where the reactor checks the operation's token).
        const int Length = 16 << 20;
        byte[] data = IoTestContext.Pattern(Length, seed: 5);
        await using var io = new IoTestContext();
        using ReactorSocket listener = io.Listen();
        using Socket peer = IoTestContext.NewPlainSocket();
        peer.ReceiveBufferSize = 64 << 10;
        using ReactorSocket ours = await io.AcceptConnectedAsync(listener, peer);
        var received = new byte[Length];

        using var first = new CancellationTokenSource();
        Task<int> send = ours.SendAsync(data, first.Token).AsTask();
        send.IsCompleted.Should().BeFalse("the peer does not read yet, so the send parks with its token");
        await IoTestContext.ReceiveExactlyAsync(peer, received).WaitAsync(Bound);
        (await send.WaitAsync(Bound)).Should().Be(Length);

        // The next send, without a token, parks on the same operation object; then the first send's token fires.
        Task<int> next = ours.SendAsync(data).AsTask();
        next.IsCompleted.Should().BeFalse("the peer does not read yet, so the send parks");
        await first.CancelAsync();

        Task reading = Task.Run(() => IoTestContext.ReceiveExactlyAsync(peer, received));
        Exception? failure = await Record.ExceptionAsync(() => next.WaitAsync(Bound));
        failure.Should().BeNull("the second send had no token: cancelling the first send's token must not reach it");
        (await next).Should().Be(Length);
        await reading.WaitAsync(Bound);
        received.AsSpan().SequenceEqual(data).Should().BeTrue("the peer must read the second send's bytes intact");
    }
}
