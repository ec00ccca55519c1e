using System.Net.Sockets;
using Scheduler.IO;

namespace Scheduler.Tests.IO;

/// <summary>
/// The reactor's dispatch of one wait's batch of readiness events. A live reactor's wait fills its whole buffer only
/// under a burst of edges no test can arrange, so the batch is handed to the dispatch directly.
/// </summary>
public sealed class ReactorDispatchTests
{
    /// <summary>
    /// A full batch is dispatched to its end and no further. Kills: IoReactor.cs Dispatch, <c>i &lt; count</c> made
    /// <c>i &lt;= count</c> — one stale event past the batch, harmless to the sockets (an extra edge) until the batch
    /// fills the buffer: then the read past its end throws on the reactor's thread, and the reactor fails every socket.
    /// </summary>
    [Fact]
    public async Task A_full_batch_of_events_is_dispatched_without_reading_past_it()
    {
        await using var io = new IoTestContext();

        // Wake-ups and tokens of slots the registration table does not have: both are skipped, and neither touches a
        // socket, so the test's thread may dispatch them beside the reactor's own thread.
        var events = new ReadinessEvent[IoReactor.EventBatchCapacity];
        for (int i = 0; i < events.Length; i++)
        {
            events[i] = i % 2 == 0
                ? new ReadinessEvent(EpollBackend.WakeToken, Readable: true, Writable: false)
                : new ReadinessEvent(Token: (ulong)int.MaxValue, Readable: true, Writable: true);
        }

        Action dispatch = () => io.Reactor.Dispatch(events, events.Length);
        dispatch.Should().NotThrow("a batch that fills the buffer ends at the buffer's end");

        // And the reactor still serves a socket afterwards.
        using ReactorSocket listener = io.Listen();
        using Socket peer = IoTestContext.NewPlainSocket();
        using ReactorSocket ours = await io.AcceptConnectedAsync(listener, peer);
        var buffer = new byte[1];
        Task<int> receive = ours.ReceiveAsync(buffer).AsTask();
        await peer.SendAsync(new byte[] { 42 });
        (await receive.WaitAsync(IoTestContext.Timeout)).Should().Be(1);
        buffer[0].Should().Be(42);
    }
}
