using System.Net.Sockets;
using Scheduler.IO;
using Scheduler.Tests.Scheduling;

namespace Scheduler.Tests.IO;

/// <summary>
/// <see cref="ReactorConnection.DisposeAsync"/> is library code called from the application's thread, which may carry a
/// single-threaded <see cref="SynchronizationContext"/> (a UI thread, a request context) that is blocked waiting for
/// the disposal. None of the disposal's own awaits may resume on that context: a continuation posted there would never
/// run, and the disposal would never end.
/// </summary>
public sealed class ReactorConnectionDisposeContextTests
{
    [Fact]
    public async Task DisposeAsync_while_lingering_never_resumes_on_the_callers_synchronization_context()
    {
        await using var io = new IoTestContext();
        using ReactorSocket listener = io.Listen();
        using Socket peer = IoTestContext.NewPlainSocket();
        peer.ReceiveBufferSize = 4 << 10; // the peer's window closes after a few KiB; the rest waits unacknowledged
        var connection = ReactorConnection.Create(await io.AcceptConnectedAsync(listener, peer));

        // The application answers and completes Output itself, then disposes (as a server does at the end of a
        // request). The reply fits the kernel's buffers, so the send loop hands all of it over, shuts the send side
        // down and ends before DisposeAsync starts; but the peer never reads, so part of it stays unacknowledged and
        // DisposeAsync lingers, polling until its grace period ends: its linger loop awaits many times.
        await io.Run(async () =>
        {
            await connection.Output.WriteAsync(new byte[12 << 10]);
            await connection.Output.CompleteAsync();
        });
        SpinWait.SpinUntil(() => connection.SendLoopEndedForTests, IoTestContext.Timeout).Should().BeTrue("the send loop ends after Output completes");
        connection.Socket.UnacknowledgedSendBytes().Should().BePositive("the peer never reads, so DisposeAsync lingers");

        var blocked = new BlockedSynchronizationContext();
        ValueTask disposal = default;
        blocked.Run(() => disposal = connection.DisposeAsync());

        await disposal.AsTask().WithTimeout("DisposeAsync, called from a context that never runs what is posted to it", IoTestContext.Timeout);
        blocked.Posts.Should().Be(0, "the disposal's continuations must not be posted to the caller's context");
    }
}
