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

    /// <summary>How long the hook holds a send that took the reset at most, should the test never release it.</summary>
    private static readonly TimeSpan SendHold = TimeSpan.FromSeconds(60);

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

    [Fact]
    public async Task A_receive_the_reactor_retries_in_that_instant_leaves_the_reactor_thread_free_for_other_sockets()
    {
        // The same instant, met by the reactor's retry of a parked receive instead of a caller's attempt. The receive
        // must not wait for the send there (it used to spin until the send recorded): a caller's send can be preempted,
        // or keep the kernel busy with a long buffer, and meanwhile no other socket of the reactor would be served.
        await using var io = new IoTestContext();
        using ReactorSocket listener = io.Listen();
        using Socket peer = IoTestContext.NewPlainSocket();
        using ReactorSocket server = await io.AcceptConnectedAsync(listener, peer);
        using Socket probePeer = IoTestContext.NewPlainSocket();
        using ReactorSocket probe = await io.AcceptConnectedAsync(listener, probePeer);

        // An accept the reactor retries holds the reactor thread while the reset arrives and the send takes it, so
        // that the reactor meets the end of stream only later, in its retry of the parked receive.
        using ReactorSocket holder = io.Listen();
        using Socket holderClient = IoTestContext.NewPlainSocket();
        using var reactorHeld = new ManualResetEventSlim();
        using var reactorGo = new ManualResetEventSlim();
        using var sendHeld = new ManualResetEventSlim();
        using var sendGo = new ManualResetEventSlim();
        ReactorSocket.RaceHookForTests = (socket, point) =>
        {
            if (ReferenceEquals(socket, holder) && point == "accept-attempt" && Thread.CurrentThread.Name == "IoReactor" && !reactorHeld.IsSet)
            {
                reactorHeld.Set();
                reactorGo.Wait(Bound);
            }
            else if (ReferenceEquals(socket, server) && point == "send-connection-error")
            {
                // Held longer than the probe below may wait (the test releases it, in its finally too): a receive that
                // waited for the send on the reactor thread then holds the probe for all of the probe's wait.
                sendHeld.Set();
                sendGo.Wait(SendHold);
            }
        };

        try
        {
            Task<int> receiving = server.ReceiveAsync(new byte[16]).AsTask();
            receiving.IsCompleted.Should().BeFalse("nothing was sent: the receive parks for the reactor to retry");
            Task<ReactorSocket> accepting = holder.AcceptAsync().AsTask();
            await holderClient.ConnectAsync(holder.LocalEndPoint!);
            reactorHeld.Wait(Bound).Should().BeTrue("the reactor retries the parked accept");

            peer.LingerState = new LingerOption(true, 0);
            peer.Close(); // RST: the reactor cannot look yet, so the send below takes the error first
            Task sending = Task.Run(async () =>
            {
                for (int i = 0; i < 200; i++)
                {
                    await server.SendAsync(new byte[] { 1 });
                    await Task.Delay(5);
                }
            });
            sendHeld.Wait(Bound).Should().BeTrue("a send takes the reset");

            // The reactor goes on: next it retries the receive, which reads 0 before the send recorded the reset.
            reactorGo.Set();
            Task<int> probing = probe.ReceiveAsync(new byte[1]).AsTask();
            probePeer.Send(new byte[] { 7 });
            // The probe waits up to 20 s (3 s was short for a reactor thread held off its core on a loaded machine); the
            // send stays held for longer, so a reactor that waited for it would still hold the probe past that.
            (await Task.WhenAny(probing, Task.Delay(IoTestContext.Timeout))).Should().BeSameAs(
                probing, "the reactor thread serves another socket while the send that took the reset is held");
            (await probing).Should().Be(1);
            receiving.IsCompleted.Should().BeFalse("the receive waits for the send to record what it took");

            sendGo.Set();
            (await sending.Awaiting(t => t.WaitAsync(Bound)).Should().ThrowAsync<SocketException>())
                .Which.SocketErrorCode.Should().Be(SocketError.ConnectionReset);
            (await receiving.Awaiting(t => t.WaitAsync(Bound)).Should().ThrowAsync<SocketException>("the stream was cut by a reset"))
                .Which.SocketErrorCode.Should().Be(SocketError.ConnectionReset);
            (await accepting.WaitAsync(Bound)).Dispose();
        }
        finally
        {
            ReactorSocket.RaceHookForTests = null;
            reactorGo.Set();
            sendGo.Set();
        }
    }

    [Fact]
    public async Task A_reset_racing_a_sender_and_a_parked_receive_always_ends_the_receive_with_the_reset()
    {
        // No hook: whoever meets the reset first (a caller's send, the reactor's retry of the receive or of a parked
        // send), the receive throws it and never reads an orderly end, and nothing hangs. Many rounds, each with a
        // sender that keeps a send attempt under way as often as it can.
        await using var io = new IoTestContext();
        using ReactorSocket listener = io.Listen();
        var buffer = new byte[16];
        for (int round = 0; round < 150; round++)
        {
            using Socket peer = IoTestContext.NewPlainSocket();
            using ReactorSocket server = await io.AcceptConnectedAsync(listener, peer);
            Task<int> receiving = server.ReceiveAsync(buffer).AsTask();
            using var sendStarted = new ManualResetEventSlim();
            Task sending = Task.Run(async () =>
            {
                var chunk = new byte[1 + (round % 4 * 4096)];
                while (true)
                {
                    sendStarted.Set();
                    await server.SendAsync(chunk);
                }
            });
            sendStarted.Wait(Bound).Should().BeTrue();
            peer.LingerState = new LingerOption(true, 0);
            peer.Close();

            (await receiving.Awaiting(t => t.WaitAsync(Bound)).Should().ThrowAsync<SocketException>($"round {round}: the stream was cut by a reset"))
                .Which.SocketErrorCode.Should().Be(SocketError.ConnectionReset);
            await sending.Awaiting(t => t.WaitAsync(Bound)).Should().ThrowAsync<SocketException>();
        }
    }

    [Fact]
    public async Task An_orderly_end_of_stream_that_arrives_during_a_long_send_still_reaches_the_receive()
    {
        // A half-close (the peer sends its request, shuts down its side and reads the long answer): the receive that
        // meets the end of stream while the answer's send attempts run parks until one ends, and must then read 0.
        await using var io = new IoTestContext();
        using ReactorSocket listener = io.Listen();
        for (int round = 0; round < 20; round++)
        {
            using Socket peer = IoTestContext.NewPlainSocket();
            using ReactorSocket server = await io.AcceptConnectedAsync(listener, peer);
            Task<int> receiving = server.ReceiveAsync(new byte[16]).AsTask();
            Task<long> peerReading = Task.Run(async () =>
            {
                var sink = new byte[256 << 10];
                long total = 0;
                int n;
                while ((n = await peer.ReceiveAsync(sink)) > 0)
                {
                    total += n;
                }

                return total;
            });
            byte[] answer = new byte[8 << 20];
            Task<int> sending = Task.Run(async () => await server.SendAsync(answer));
            peer.Shutdown(SocketShutdown.Send);

            (await receiving.WaitAsync(Bound)).Should().Be(0, $"round {round}: the peer ended its stream in order");
            (await sending.WaitAsync(Bound)).Should().Be(answer.Length);
            server.Shutdown(SocketShutdown.Send);
            (await peerReading.WaitAsync(Bound)).Should().Be(answer.Length);
        }
    }

    [Fact]
    public async Task Receives_that_meet_an_end_of_stream_among_back_to_back_sends_each_read_0_and_none_hangs()
    {
        // A sender in a tight loop of small sends that complete at once keeps a caller's send attempt under way most
        // of the time: a receive that reads 0 then parks, is retried after the attempt ends, may meet the next attempt
        // and park again. Both kinds of receive: the reactor's retry of one parked before the end of stream, and
        // callers' own attempts after it (whose re-arm can come before they have parked).
        await using var io = new IoTestContext();
        using ReactorSocket listener = io.Listen();
        var buffer = new byte[16];
        for (int round = 0; round < 16; round++)
        {
            using Socket peer = IoTestContext.NewPlainSocket();
            using ReactorSocket server = await io.AcceptConnectedAsync(listener, peer);
            using var stop = new CancellationTokenSource();
            Task<int> parked = server.ReceiveAsync(buffer).AsTask();
            Task<long> peerReading = Task.Run(async () =>
            {
                var sink = new byte[64 << 10];
                long total = 0;
                int n;
                while ((n = await peer.ReceiveAsync(sink)) > 0)
                {
                    total += n;
                }

                return total;
            });
            using var sendStarted = new ManualResetEventSlim();
            Task<long> sending = Task.Run(async () =>
            {
                var chunk = new byte[1 + (round % 4 * 256)];
                long sent = 0;
                while (!stop.IsCancellationRequested)
                {
                    sendStarted.Set();
                    sent += await server.SendAsync(chunk);
                }

                return sent;
            });
            sendStarted.Wait(Bound).Should().BeTrue();
            peer.Shutdown(SocketShutdown.Send);

            (await parked.WaitAsync(Bound)).Should().Be(0, $"round {round}: the reactor's retry reads the orderly end");
            for (int i = 0; i < 30; i++)
            {
                (await server.ReceiveAsync(buffer).AsTask().WaitAsync(Bound)).Should().Be(0, $"round {round}, receive {i}: a caller's attempt reads the orderly end");
            }

            stop.Cancel();
            long sentTotal = await sending.WaitAsync(Bound);
            server.Shutdown(SocketShutdown.Send);
            (await peerReading.WaitAsync(Bound)).Should().Be(sentTotal);
        }
    }
}
