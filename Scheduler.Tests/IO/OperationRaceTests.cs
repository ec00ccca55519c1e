using System.Net.Sockets;
using Scheduler.IO;
using Scheduler.Tests.Scheduling;

namespace Scheduler.Tests.IO;

/// <summary>
/// Races between the reactor retrying a parked operation and the parties that may finish it instead (cancellation,
/// disposal). A gate inside the caller's buffer (<see cref="GatedMemory.GetSpan"/> runs on the reactor thread during
/// its retry) holds the reactor at the exact point of the race, so each interleaving is produced on purpose.
/// </summary>
public sealed class OperationRaceTests
{
    private static readonly TimeSpan Bound = TimeSpan.FromSeconds(10);

    [Fact]
    public async Task A_cancellation_that_fires_while_the_reactor_retries_a_send_is_not_lost()
    {
        await using var io = new IoTestContext();
        using ReactorSocket listener = io.Listen();
        using Socket peer = IoTestContext.NewPlainSocket();
        peer.ReceiveBufferSize = 64 << 10;
        using ReactorSocket ours = await io.AcceptConnectedAsync(listener, peer);

        // Far more than the kernel buffers of both ends can take: the send parks, and parks again after each retry.
        using var memory = new GatedMemory(32 << 20);
        using var cts = new CancellationTokenSource();
        Task<int> send = ours.SendAsync(memory.Memory, cts.Token).AsTask();
        send.IsCompleted.Should().BeFalse("the peer does not read, so the send must wait for room");

        // The peer reads until the reactor retries the send; the gate holds the reactor inside that retry.
        memory.Arm();
        var chunk = new byte[64 << 10];
        var peerReceives = new List<Task<int>>();
        Task entered = Task.Run(() => memory.Entered.Wait(Bound));
        while (!memory.Entered.IsSet && !entered.IsCompleted)
        {
            await Task.WhenAny(PeerReceive(), entered).WaitAsync(Bound);
        }

        // (Once the wait above gave up, the loop would spin on the completed task, issuing receives forever.)
        memory.Entered.IsSet.Should().BeTrue("the peer's reads make room, so the reactor must retry the parked send");

        // Cancelled while the reactor owns the operation (Running): the callback cannot finish it itself.
        await cts.CancelAsync();
        memory.Release();

        // The retry takes what fits and parks again; the peer reads no more, so no edge will ever come. The cancellation
        // must still end the send.
        Func<Task> awaiting = () => send.WaitAsync(Bound);
        (await awaiting.Should().ThrowAsync<OperationCanceledException>()).Which.CancellationToken.Should().Be(cts.Token);

        // The socket stays usable: the next send goes out once the peer reads again.
        Task<int> next = ours.SendAsync(new byte[] { 42 }).AsTask();
        while (!next.IsCompleted)
        {
            await Task.WhenAny(next, PeerReceive()).WaitAsync(Bound);
        }

        (await next).Should().Be(1);
        await EndPeerReceives(peer, peerReceives);

        Task<int> PeerReceive()
        {
            Task<int> receive = peer.ReceiveAsync(chunk.AsMemory()).AsTask();
            peerReceives.Add(receive);
            return receive;
        }
    }

    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(3)]
    public async Task Receives_cancelled_at_random_moments_during_a_stream_lose_no_byte(int seed)
    {
        // Cancellation races the reactor's retry all the time here: a receive either completes with its bytes or is
        // cancelled having consumed nothing, so the bytes received in total are exactly the stream.
        const int Length = 2 << 20;
        byte[] data = IoTestContext.Pattern(Length, seed);
        await using var io = new IoTestContext();
        using ReactorSocket listener = io.Listen();
        using Socket peer = IoTestContext.NewPlainSocket();
        using ReactorSocket ours = await io.AcceptConnectedAsync(listener, peer);
        Task send = Task.Run(async () =>
        {
            var random = new Random(seed * 3);
            for (int offset = 0; offset < Length;)
            {
                // Small chunks with pauses: the receiver often finds nothing and waits, which is when it can be cancelled.
                int length = Math.Min(random.Next(1, 16 << 10), Length - offset);
                await peer.SendAsync(data.AsMemory(offset, length));
                offset += length;
                if (random.Next(4) == 0)
                {
                    await Task.Delay(1);
                }
            }

            peer.Shutdown(SocketShutdown.Send);
        });

        (byte[] received, int cancelled) = await io.Run(async () =>
        {
            var random = new Random(seed * 5);
            var output = new MemoryStream(Length);
            var buffer = new byte[32 << 10];
            int cancellations = 0;
            while (true)
            {
                using var cts = new CancellationTokenSource();
                ValueTask<int> receive = ours.ReceiveAsync(buffer.AsMemory(0, random.Next(1, buffer.Length + 1)), cts.Token);
                if (!receive.IsCompleted && random.Next(2) == 0)
                {
                    if (random.Next(2) == 0)
                    {
                        await Task.Yield();
                    }

                    // From another thread, to race the reactor as it completes the receive.
                    await Task.Run(cts.Cancel);
                }

                int n;
                try
                {
                    n = await receive;
                }
                catch (OperationCanceledException e)
                {
                    e.CancellationToken.Should().Be(cts.Token);
                    cancellations++;
                    continue;
                }

                if (n == 0)
                {
                    return (output.ToArray(), cancellations);
                }

                output.Write(buffer, 0, n);
            }
        }, TimeSpan.FromSeconds(60));

        await send.WithTimeout("The peer's sends", IoTestContext.Timeout);
        cancelled.Should().BeGreaterThan(0, "some receives were cancelled while pending");
        received.Length.Should().Be(Length);
        received.AsSpan().CommonPrefixLength(data).Should().Be(Length, "every byte arrives once, in order");
    }

    [Fact]
    public async Task Disposing_the_socket_while_the_reactor_retries_a_send_fails_it_with_ObjectDisposedException()
    {
        await using var io = new IoTestContext();
        using ReactorSocket listener = io.Listen();
        using Socket peer = IoTestContext.NewPlainSocket();
        peer.ReceiveBufferSize = 64 << 10;
        ReactorSocket ours = await io.AcceptConnectedAsync(listener, peer);

        using var memory = new GatedMemory(32 << 20);
        Task<int> send = ours.SendAsync(memory.Memory).AsTask();
        send.IsCompleted.Should().BeFalse("the peer does not read, so the send must wait for room");

        memory.Arm();
        var chunk = new byte[64 << 10];
        var peerReceives = new List<Task<int>>();
        Task entered = Task.Run(() => memory.Entered.Wait(Bound));
        while (!memory.Entered.IsSet && !entered.IsCompleted)
        {
            await Task.WhenAny(PeerReceive(), entered).WaitAsync(Bound);
        }

        // (Once the wait above gave up, the loop would spin on the completed task, issuing receives forever.)
        memory.Entered.IsSet.Should().BeTrue("the peer's reads make room, so the reactor must retry the parked send");

        // Disposed while the reactor owns the operation and holds the fd for its system call.
        ours.Dispose();
        memory.Release();

        Func<Task> awaiting = () => send.WaitAsync(Bound);
        await awaiting.Should().ThrowAsync<ObjectDisposedException>();
        io.Reactor.RegisteredCount.Should().Be(1, "only the listener is left");

        // The fd was closed once the retry let go of it: the peer reads the rest and then the end of the stream.
        int n;
        do
        {
            n = await PeerReceive().WaitAsync(Bound);
        }
        while (n > 0);

        await EndPeerReceives(peer, peerReceives);

        Task<int> PeerReceive()
        {
            Task<int> receive = peer.ReceiveAsync(chunk.AsMemory()).AsTask();
            peerReceives.Add(receive);
            return receive;
        }
    }

    /// <summary>
    /// Closes the peer and waits for every receive it issued, observing each: a receive the loops above left behind
    /// when the other task of a <c>WhenAny</c> won is still pending, and the peer's disposal fails it with
    /// OperationAborted (ECANCELED), which went unobserved to the finalizer (UNOBSERVED_PROBE, session 35).
    /// </summary>
    private static async Task EndPeerReceives(Socket peer, List<Task<int>> receives)
    {
        peer.Dispose();
        await Task.WhenAll(receives.Select(static receive => receive.Ended())).WaitAsync(Bound);
    }

    [Fact]
    public async Task An_awaiter_whose_context_refuses_the_continuation_does_not_stop_the_reactor()
    {
        await using var io = new IoTestContext();
        using ReactorSocket listener = io.Listen();
        (ReactorSocket client, ReactorSocket server) = await io.ConnectPairOnSchedulerAsync(listener);
        using (client)
        using (server)
        {
            // Awaited by hand (OnCompleted, then the result once resumed), as an awaiter on that context would.
#pragma warning disable CA2012
            ValueTask<int> receive = server.ReceiveAsync(new byte[8]);
#pragma warning restore CA2012
            receive.IsCompleted.Should().BeFalse();
            using var resumed = new ManualResetEventSlim();
            SynchronizationContext? previous = SynchronizationContext.Current;
            SynchronizationContext.SetSynchronizationContext(new RefusingContext());
            try
            {
                receive.GetAwaiter().OnCompleted(resumed.Set);
            }
            finally
            {
                SynchronizationContext.SetSynchronizationContext(previous);
            }

            await client.SendAsync(new byte[] { 1 });
            resumed.Wait(Bound).Should().BeTrue("the continuation must run somewhere when its context refuses it");
            receive.IsCompleted.Should().BeTrue();
            (await receive).Should().Be(1);

            // The reactor still serves every socket.
            (ReactorSocket otherClient, ReactorSocket otherServer) = await io.ConnectPairOnSchedulerAsync(listener);
            using (otherClient)
            using (otherServer)
            {
                await io.Run(async () =>
                {
                    await otherClient.SendAsync(new byte[] { 2 });
                    var buffer = new byte[1];
                    await IoTestContext.ReceiveExactlyAsync(otherServer, buffer);
                    buffer[0].Should().Be(2);
                });
            }
        }
    }

    /// <summary>A context that refuses every post (as a UI context does once its loop has ended).</summary>
    private sealed class RefusingContext : SynchronizationContext
    {
        public override void Post(SendOrPostCallback d, object? state) =>
            throw new InvalidOperationException("The context's loop has ended.");
    }
}
