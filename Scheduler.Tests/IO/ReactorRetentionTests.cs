using System.Net.Sockets;
using Scheduler.IO;

namespace Scheduler.Tests.IO;

/// <summary>
/// The reactor's thread lets go of a socket it dispatched an event to once that socket is closed and dropped, even when
/// no event comes after it and the thread sleeps in <c>epoll_wait</c> for a long time.
/// </summary>
public sealed class ReactorRetentionTests
{
    [Fact]
    public async Task A_closed_socket_the_reactor_last_dispatched_to_is_collected_while_the_reactor_sleeps()
    {
        await using var io = new IoTestContext();
        using ReactorSocket listener = io.Listen();
        using Socket peer = IoTestContext.NewPlainSocket();

        WeakReference socket = await ReceiveOneEventAndClose(io, listener, peer);
        Collected.Await(socket);

        socket.IsAlive.Should().BeFalse("nothing of the reactor keeps a closed, dropped socket alive");
    }

    private static async Task<WeakReference> ReceiveOneEventAndClose(IoTestContext io, ReactorSocket listener, Socket peer)
    {
        ReactorSocket ours = await io.AcceptConnectedAsync(listener, peer);
        var buffer = new byte[1];
        Task<int> receive = ours.ReceiveAsync(buffer).AsTask();
        receive.IsCompleted.Should().BeFalse("nothing was sent yet: the receive waits for the reactor's readiness event");
        await peer.SendAsync(new byte[] { 7 });
        (await receive.WaitAsync(IoTestContext.Timeout)).Should().Be(1);
        ours.Dispose();
        return new WeakReference(ours);
    }
}
