using System.Buffers;
using System.IO.Pipelines;
using System.Net.Sockets;
using Scheduler.IO;
using Scheduler.Tests.Scheduling;

namespace Scheduler.Tests.IO;

/// <summary>
/// Behaviours of <see cref="ReactorConnection"/> that a mutation round found unpinned: each test names the mutant it
/// kills (a small edit of the library that every other test let through).
/// </summary>
[Collection(nameof(IoStressGroup))]
public sealed class ConnectionMutationKillTests
{
    /// <summary>
    /// Kills: ReactorConnection.SchedulerGuard.cs GuardSchedulers passing <c>writer, reader</c> instead of
    /// <c>reader, writer</c> to the rebuilt <see cref="PipeOptions"/>. A user's reader scheduler must run the reader's
    /// continuations (the application's <c>Input.ReadAsync</c>), and the writer scheduler only the writer's (a flush that
    /// waited on backpressure, which never happens for a few bytes): with the two swapped the application resumed on
    /// the wrong scheduler, and the send loop's reads went through the Output's writer scheduler.
    /// </summary>
    [Fact]
    public async Task A_wrapped_user_scheduler_keeps_its_role_reader_continuations_on_the_reader_scheduler()
    {
        await using var io = new IoTestContext();
        var inputReader = new CountingScheduler();
        var inputWriter = new CountingScheduler();
        var outputReader = new CountingScheduler();
        var outputWriter = new CountingScheduler();
        var inputOptions = new PipeOptions(readerScheduler: inputReader, writerScheduler: inputWriter, useSynchronizationContext: false);
        var outputOptions = new PipeOptions(readerScheduler: outputReader, writerScheduler: outputWriter, useSynchronizationContext: false);
        using ReactorSocket listener = io.Listen();
        (ReactorSocket peer, ReactorSocket server) = await io.ConnectPairOnSchedulerAsync(listener);
        using (peer)
        {
            var connection = ReactorConnection.Create(server, inputOptions, outputOptions);
            await using var disposeConnection = IoTestContext.DisposeWithin(connection);
            {
                for (int round = 0; round < 3; round++)
                {
                    // The application waits for input before any arrives: its continuation goes through a scheduler.
                    // AsTask now: registered before the byte comes, so the pipe schedules it (registered after, it would not).
                    Task<ReadResult> pending = connection.Input.ReadAsync().AsTask();
                    pending.IsCompleted.Should().BeFalse("nothing was sent yet");
                    await io.Run(async () => (await peer.SendAsync(new[] { (byte)round })).Should().Be(1));
                    ReadResult result = await pending.WaitAsync(IoTestContext.Timeout);
                    result.Buffer.Length.Should().Be(1);
                    connection.Input.AdvanceTo(result.Buffer.End);

                    // The send loop waits in its read while we write: its continuation goes through Output's reader scheduler.
                    await connection.Output.WriteAsync(new byte[] { (byte)round });
                    var echo = new byte[1];
                    await io.Run(() => IoTestContext.ReceiveExactlyAsync(peer, echo));
                    echo[0].Should().Be((byte)round);
                }

                inputReader.Count.Should().BeGreaterThan(0, "the application's reads resume through Input's reader scheduler");
                outputReader.Count.Should().BeGreaterThan(0, "the send loop's reads resume through Output's reader scheduler");
                inputWriter.Count.Should().Be(0, "the receive loop never waited on backpressure for a byte");
                outputWriter.Count.Should().Be(0, "the application never waited on backpressure for a byte");
            }
        }
    }

    /// <summary>
    /// Kills: ReactorConnection.cs DisposeAsync not calling <c>_input.Writer.CancelPendingFlush()</c> before it lingers,
    /// and ReactorConnection.Loops.cs ReceiveLoopAsync ending on <c>flush.IsCompleted</c> only (a cancelled flush ignored).
    /// Either way a receive loop held by backpressure stayed held while DisposeAsync lingered: a peer that sends its whole
    /// request before it reads the reply (more than the kernels buffer) was stuck in its send, never read the reply, and
    /// the grace period ended in a reset. The linger must drain the request so the peer's send completes and the whole
    /// reply arrives.
    /// </summary>
    [Theory]
    [InlineData(12 << 10)]
    [InlineData(16 << 10)]
    public async Task DisposeAsync_drains_the_rest_of_a_request_held_by_backpressure_so_a_sequential_peer_gets_the_reply(int replyLength)
    {
        await using var io = new IoTestContext();
        using ReactorSocket listener = io.Listen();
        using Socket peer = IoTestContext.NewPlainSocket();
        peer.ReceiveBufferSize = 4096; // the reply does not fit the peer's window: it stays unacknowledged until read
        peer.SendBufferSize = 64 << 10; // bounded, so a request of a few MB blocks the peer's send while Input is held
        ReactorSocket server = await io.AcceptConnectedAsync(listener, peer);
        var inputOptions = new PipeOptions(
            readerScheduler: io.Scheduler.PipeScheduler,
            writerScheduler: io.Scheduler.PipeScheduler,
            pauseWriterThreshold: 4096,
            resumeWriterThreshold: 2048,
            useSynchronizationContext: false);
        var connection = ReactorConnection.Create(server, inputOptions);
        byte[] request = new byte[2 << 20]; // far more than the two kernels buffer while Input is paused
        byte[] reply = IoTestContext.Pattern(replyLength, 37);

        // A sequential peer: the whole request first, then its end, then the reply.
        Task<(SocketError? SendError, int Received, bool Intact)> peerSide = Task.Run(async () =>
        {
            try
            {
                int sent = 0;
                while (sent < request.Length)
                {
                    sent += await peer.SendAsync(request.AsMemory(sent));
                }

                peer.Shutdown(SocketShutdown.Send);
            }
            catch (SocketException e)
            {
                return ((SocketError?)e.SocketErrorCode, 0, false);
            }

            var received = new byte[reply.Length + 1];
            int total = 0;
            try
            {
                int n;
                while (total < received.Length && (n = await peer.ReceiveAsync(received.AsMemory(total))) > 0)
                {
                    total += n;
                }
            }
            catch (SocketException)
            {
                // Only the bytes matter here; what follows the reply is the other tests' business.
            }

            return (null, total, received.AsSpan(0, Math.Min(total, reply.Length)).SequenceEqual(reply.AsSpan(0, Math.Min(total, reply.Length))));
        });

        await io.Run(async () =>
        {
            await connection.Output.WriteAsync(reply);
            await connection.DisposeAsync();
        });

        (SocketError? sendError, int receivedLength, bool intact) = await peerSide.WaitAsync(IoTestContext.Timeout);
        sendError.Should().BeNull("the lingering close reads and drops the request instead of resetting the peer's send");
        receivedLength.Should().Be(reply.Length);
        intact.Should().BeTrue();
    }

    /// <summary>
    /// Kills: ReactorConnection.Loops.cs AbortingWriter.AbortIfFirstCompletionFailed aborting on every completion with an
    /// exception instead of only the first. An orderly <c>Output.Complete()</c> starts the drain of what was written; a
    /// <c>Complete(exception)</c> after it (a cleanup path that completes again) must not cut that drain off: the peer
    /// still receives every byte and then our end of stream.
    /// </summary>
    [Fact]
    public async Task A_failed_completion_after_an_orderly_one_does_not_cut_off_the_drain()
    {
        await using var io = new IoTestContext();
        (ReactorConnection connection, ReactorSocket peer) = await io.ConnectionPairAsync();
        using (peer)
        {
            await using var disposeConnection = IoTestContext.DisposeWithin(connection);
            byte[] data = IoTestContext.Pattern(4 << 20, 41);
            await io.Run(() =>
            {
                // Advanced, not flushed: all of it is still in the pipe when both completions land.
                for (int offset = 0; offset < data.Length; offset += 64 << 10)
                {
                    Span<byte> span = connection.Output.GetSpan(64 << 10);
                    data.AsSpan(offset, 64 << 10).CopyTo(span);
                    connection.Output.Advance(64 << 10);
                }

                connection.Output.Complete();
                connection.Output.Complete(new InvalidOperationException("a second, failed completion"));
                return Task.CompletedTask;
            });

            byte[] received = await io.Run(async () =>
            {
                var all = new byte[data.Length + 1];
                int total = 0;
                int n;
                while (total < all.Length && (n = await peer.ReceiveAsync(all.AsMemory(total))) > 0)
                {
                    total += n;
                }

                return all.AsSpan(0, total).ToArray();
            });
            received.Length.Should().Be(data.Length, "the drain the first completion started must finish, then end of stream");
            received.AsSpan().SequenceEqual(data).Should().BeTrue();
        }
    }

    /// <summary>
    /// Kills: ReactorConnection.Loops.cs SendLoopAsync ending only on <c>result.IsCompleted</c> (the cancelled read of a
    /// DisposeAsync ignored). While the application holds memory from <c>GetMemory</c>, DisposeAsync does not complete
    /// Output but cancels the send loop's read: the loop must take that as its end, shut the send side down and let the
    /// close linger, so a peer whose request we did not read gets the reply and our end of stream, not a reset. Also
    /// kills: ReactorConnection.cs DisposeAsync, its first <c>_output.Reader.CancelPendingRead()</c> removed — the send
    /// loop then waited out the grace period in its read, the close did not linger, and the request still in the socket
    /// (held there by backpressure) made it a reset.
    /// </summary>
    [Fact]
    public async Task DisposeAsync_while_a_writer_holds_memory_still_ends_the_stream_with_a_FIN_not_a_reset()
    {
        await using var io = new IoTestContext();
        using ReactorSocket listener = io.Listen();
        using Socket peer = IoTestContext.NewPlainSocket();
        ReactorSocket server = await io.AcceptConnectedAsync(listener, peer);
        var inputOptions = IoTestContext.PausingPast64Bytes();
        var connection = ReactorConnection.Create(server, inputOptions);

        // A request nobody reads: past Input's 64-byte threshold most of it stays in the socket, unread at the close.
        await peer.SendAsync(new byte[8 << 10]).WaitAsync(IoTestContext.Timeout);
        byte[] reply = IoTestContext.Pattern(1000, 43);
        Memory<byte> held = default;
        await io.Run(async () =>
        {
            await connection.Output.WriteAsync(reply);
            held = connection.Output.GetMemory(); // held, never advanced: DisposeAsync must not complete Output
            await connection.DisposeAsync();
        });

        var received = new byte[reply.Length + 1];
        int total = 0;
        SocketError? error = null;
        try
        {
            int n;
            while (total < received.Length && (n = await peer.ReceiveAsync(received.AsMemory(total)).AsTask().WaitAsync(IoTestContext.Timeout)) > 0)
            {
                total += n;
            }
        }
        catch (SocketException e)
        {
            error = e.SocketErrorCode;
        }

        error.Should().BeNull("the send loop ends at the cancelled read and shuts the send side down; the close lingers");
        total.Should().Be(reply.Length);
        received.AsSpan(0, total).SequenceEqual(reply).Should().BeTrue();

        // The held block is still the writer's: the pipe was not completed under it (Kills: AbortingWriter.Hold, the
        // compare-and-swap to Holding removed or its `== Idle` negated — DisposeAsync claimed the writer, completed the
        // pipe and gave the block back to the pool, shared with every connection, while the writer still filled it).
        held.Span.Fill(7);
        FluentActions.Invoking(() => connection.Output.Advance(16)).Should().NotThrow("DisposeAsync left the pipe alone while memory was held");
        await connection.Output.CompleteAsync(); // gives the held block back
    }

    /// <summary>A user scheduler that runs everything on the ThreadPool and counts what it was given.</summary>
    private sealed class CountingScheduler : PipeScheduler
    {
        private int _count;

        public int Count => Volatile.Read(ref _count);

        public override void Schedule(Action<object?> action, object? state)
        {
            Interlocked.Increment(ref _count);
            System.Threading.ThreadPool.UnsafeQueueUserWorkItem(action, state, preferLocal: false);
        }
    }

    /// <summary>
    /// Kills: ReactorConnection.Loops.cs ShutdownSend, its <c>when (e.SocketErrorCode == SocketError.NotConnected)</c>
    /// negated. A peer reset the connection while the receive loop was paused by backpressure, so nothing has taken the
    /// reset yet; then the application completes Output with nothing left to send, and shutting the send side down
    /// finds the socket closed (ENOTCONN). That is not a failure of ours to report: Input still hands over what arrived
    /// and then ends with the peer's reset. With the filter negated, the send loop recorded the ENOTCONN as what ended
    /// the connection, and Input ended with "not connected" instead.
    /// </summary>
    [Fact]
    public async Task Output_completed_after_an_unread_reset_leaves_Input_ending_with_the_reset()
    {
        await using var io = new IoTestContext();
        using ReactorSocket listener = io.Listen();
        using Socket peer = IoTestContext.NewPlainSocket();
        var inputOptions = IoTestContext.PausingPast64Bytes();
        var connection = ReactorConnection.Create(await io.AcceptConnectedAsync(listener, peer), inputOptions);
        await using var disposeConnection = IoTestContext.DisposeWithin(connection);

        // A kilobyte over a 64-byte threshold pauses the receive loop's flush: it does not receive while the reset comes.
        byte[] request = IoTestContext.Pattern(1024, 43);
        await peer.SendAsync(request);
        ReadResult first = await connection.Input.ReadAsync().AsTask().WaitAsync(IoTestContext.Timeout);
        connection.Input.AdvanceTo(first.Buffer.Start);
        peer.LingerState = new LingerOption(true, 0);
        peer.Close(); // RST
        Thread.Sleep(50); // loopback delivers it at once; arriving later, it only makes our shutdown succeed

        await io.Run(async () => await connection.Output.CompleteAsync());
        SpinWait.SpinUntil(() => connection.SendLoopEndedForTests, IoTestContext.Timeout).Should().BeTrue("the send loop ends after Output completes");

        var received = new List<byte>();
        Func<Task> readToEnd = () => io.Run(async () =>
        {
            while (true)
            {
                ReadResult result = await connection.Input.ReadAsync();
                received.AddRange(result.Buffer.ToArray());
                connection.Input.AdvanceTo(result.Buffer.End);
                if (result.IsCompleted)
                {
                    return;
                }
            }
        });
        (await readToEnd.Should().ThrowAsync<SocketException>("a reset ends Input with an error, never as an orderly end"))
            .Which.SocketErrorCode.Should().Be(SocketError.ConnectionReset, "Input reports the peer's reset, not our shutdown's ENOTCONN");
        received.Should().Equal(request, "what arrived before the reset is handed over first");
    }

    /// <summary>
    /// Kills: ReactorConnection.cs DisposeAsync, its final <c>await _receiveLoop</c> (<paramref name="receiveLoopRunning"/>)
    /// or <c>await _sendLoop</c> removed. <c>DisposeAsync</c> returns once the connection is done, also when it finds a
    /// disposal already under way (idempotent, not "returns at once"): a second call made while the first lingers waits
    /// for the loop still running. The receive loop runs on while the first call lingers on a peer that does not read
    /// (the send loop has ended); the send loop runs on while it waits to send to such a peer after the peer ended its
    /// stream (the receive loop has ended).
    /// </summary>
    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public async Task A_second_DisposeAsync_returns_only_when_the_first_has_finished(bool receiveLoopRunning)
    {
        await using var io = new IoTestContext();
        using ReactorSocket listener = io.Listen();
        using Socket peer = IoTestContext.NewPlainSocket();
        peer.ReceiveBufferSize = 4 << 10; // the peer never reads: its window closes after a few KiB
        var connection = ReactorConnection.Create(await io.AcceptConnectedAsync(listener, peer));
        Task write = Task.CompletedTask;
        if (receiveLoopRunning)
        {
            await io.CompleteOutputToAPeerThatDoesNotReadAsync(connection);
        }
        else
        {
            // The peer's end of stream ends the receive loop; megabytes written fill both sides' buffers, so the send
            // loop waits for room until the disposal's grace period ends.
            peer.Shutdown(SocketShutdown.Send);
            ReadResult end = await connection.Input.ReadAsync().AsTask().WaitAsync(IoTestContext.Timeout);
            end.IsCompleted.Should().BeTrue("the peer ended its stream");
            connection.Input.AdvanceTo(end.Buffer.End);
            write = io.Run(async () => await connection.Output.WriteAsync(new byte[8 << 20]));
            SpinWait.SpinUntil(() => connection.Socket.UnacknowledgedSendBytes() > 0, IoTestContext.Timeout).Should().BeTrue();
        }

        ValueTask first = connection.DisposeAsync();
        first.IsCompleted.Should().BeFalse("the first disposal waits for the peer for up to its grace period");
        ValueTask second = connection.DisposeAsync();
        second.IsCompleted.Should().BeFalse("the second call must wait for the loop still running");
        await first.AsTask().WithTimeout("the first DisposeAsync", IoTestContext.Timeout);
        await second.AsTask().WithTimeout("the second DisposeAsync", IoTestContext.Timeout);
        connection.SendLoopEndedForTests.Should().BeTrue();
        await write.WithTimeout("the write the disposal released", IoTestContext.Timeout);
    }

    /// <summary>
    /// Kills: ReactorConnection.cs DisposeAsync, the linger loop's <c>await Task.WhenAny(_receiveLoop, Task.Delay(...))</c>
    /// removed. The linger polls every few milliseconds for the peer's acknowledgement; it waits between polls, on no
    /// thread. Without the wait the loop spun on the caller's thread for the whole grace period (a second of a core per
    /// closed connection), inside the call.
    /// </summary>
    [Fact]
    public async Task A_lingering_DisposeAsync_waits_between_its_polls_instead_of_spinning_on_the_callers_thread()
    {
        await using var io = new IoTestContext();
        using ReactorSocket listener = io.Listen();
        using Socket peer = IoTestContext.NewPlainSocket();
        peer.ReceiveBufferSize = 4 << 10;
        var connection = ReactorConnection.Create(await io.AcceptConnectedAsync(listener, peer));
        await io.CompleteOutputToAPeerThatDoesNotReadAsync(connection);

        // Everything DisposeAsync does before its first wait runs inside this call, on this thread.
        long before = ThreadCpu.CurrentThreadNanoseconds();
        ValueTask disposal = connection.DisposeAsync();
        double milliseconds = (ThreadCpu.CurrentThreadNanoseconds() - before) / 1e6;

        milliseconds.Should().BeLessThan(
            ReactorConnection.DisposeGracePeriod.TotalMilliseconds / 4,
            "a lingering disposal waits for the peer's acknowledgement off the caller's thread; it does not spin for its grace period");
        await disposal.AsTask().WithTimeout("DisposeAsync", IoTestContext.Timeout);
    }
}
