using System.Net.Sockets;
using Scheduler.IO;

namespace Scheduler.Tests.IO;

/// <summary>Tests that set the process-wide <see cref="ReactorSocket.RaceHookForTests"/> run one at a time.</summary>
[CollectionDefinition(nameof(RaceHookGroup))]
public sealed class RaceHookGroup;

/// <summary>
/// A receive that reads 0 in the instant between a send taking a failed connection's error from the kernel and the
/// send recording it on the socket: <see cref="ReactorSocket.RaceHookForTests"/> holds the send right there.
/// </summary>
[Collection(nameof(RaceHookGroup))]
public sealed class SendErrorWindowTests
{
    private static readonly TimeSpan Bound = TimeSpan.FromSeconds(10);

    [Fact]
    public async Task A_receive_that_reads_0_before_the_send_recorded_the_reset_it_took_still_throws_the_reset()
    {
        await using var io = new IoTestContext();
        using ReactorSocket listener = io.Listen();
        using Socket peer = IoTestContext.NewPlainSocket();
        using ReactorSocket server = await io.AcceptConnectedAsync(listener, peer);

        using var sendHeld = new ManualResetEventSlim();
        using var sendGo = new ManualResetEventSlim();
        ReactorSocket.RaceHookForTests = (socket, point) =>
        {
            if (ReferenceEquals(socket, server) && point == "send-connection-error")
            {
                sendHeld.Set();
                sendGo.Wait(Bound);
            }
        };

        try
        {
            peer.LingerState = new LingerOption(true, 0);
            peer.Close(); // RST: nothing is waiting on our socket, so the next send takes the error

            // Off the scheduler: each send attempt runs on this pool thread, which the hook holds.
            Task sending = Task.Run(async () =>
            {
                for (int i = 0; i < 200; i++)
                {
                    await server.SendAsync(new byte[] { 1 });
                    await Task.Delay(5);
                }
            });
            sendHeld.Wait(Bound).Should().BeTrue("a send takes the reset");

            // The kernel now reports an end of stream to receives, and the error is not recorded yet.
            Task<int> receiving = Task.Run(async () => await server.ReceiveAsync(new byte[16]));
            await Task.WhenAny(receiving, Task.Delay(100));
            sendGo.Set();

            (await sending.Awaiting(t => t.WaitAsync(Bound)).Should().ThrowAsync<SocketException>())
                .Which.SocketErrorCode.Should().Be(SocketError.ConnectionReset);
            (await receiving.Awaiting(t => t.WaitAsync(Bound)).Should().ThrowAsync<SocketException>("the stream was cut by a reset"))
                .Which.SocketErrorCode.Should().Be(SocketError.ConnectionReset);
        }
        finally
        {
            ReactorSocket.RaceHookForTests = null;
            sendGo.Set();
        }
    }
}
