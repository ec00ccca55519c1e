using System.Net.Sockets;
using Scheduler.IO;

namespace Scheduler.Tests.IO;

/// <summary>
/// What the reactor's thread holds on to. It lets go of a socket it dispatched an event to once that socket is closed and dropped, even when
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

    /// <summary>
    /// Nor does the reactor keep the process: its thread is a background thread, so a program that returns from Main
    /// without disposing its reactor still exits. Kills: IoReactor.cs constructor, <c>IsBackground = true</c> made false.
    /// </summary>
    [Fact]
    public async Task The_reactors_thread_does_not_keep_the_process_alive()
    {
        await using var io = new IoTestContext();
        io.Reactor.IsThreadBackgroundForTests.Should().BeTrue();
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
