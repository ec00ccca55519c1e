using System.Buffers;
using System.Diagnostics.CodeAnalysis;
using System.IO.Pipelines;
using System.Net.Sockets;

namespace Scheduler.IO;

// The loops start on the reactor's scheduler (see the constructor). No await here asks for the current context
// (ConfigureAwait(false)): on a worker (or a compensation thread) a socket operation still resumes on the scheduler, and
// a pipe still resumes the loop through its PipeScheduler; only the drain of unread input after DisposeAsync's linger
// verdict, a one-off at the end, runs on the ThreadPool. But a loop is not always on the scheduler: with
// PipeScheduler.Inline on its side of a pipe (Input's writer, Output's reader), it resumes on whatever thread released
// it, the application's, inside its AdvanceTo or FlushAsync, under the application's SynchronizationContext. A socket
// operation awaited from there with the context captured it, and a context whose thread is blocked until the
// connection is done (a UI thread, sync over async) never ran the loop again: the connection stopped receiving or
// sending for good, and DisposeAsync waited for that loop forever (ReactorConnectionInlineContextTests).

public sealed partial class ReactorConnection
{
    private const int MinimumReceiveSize = 2048;
    private const int MaximumSendSize = 1 << 30;

    // GetMemory → receive → Advance → Flush. FlushAsync waits while the reader is over the pause threshold:
    // that is what stops reading from the socket and pushes backpressure to the peer.
    private async Task ReceiveLoopAsync()
    {
        PipeWriter writer = _input.Writer;
        Exception? error = null;
        bool streamEnded = false;
        try
        {
            while (true)
            {
                Memory<byte> memory = writer.GetMemory(MinimumReceiveSize);
                int received = await Socket.ReceiveAsync(memory).ConfigureAwait(false);
                if (received == 0)
                {
                    error = Volatile.Read(ref _sendFailure);
                    streamEnded = true;
                    break;
                }

                writer.Advance(received);
                FlushResult flush;
                try
                {
                    flush = await writer.FlushAsync().ConfigureAwait(false);
                }
                catch (Exception)
                {
                    // The application completed Input with an exception (the flush rethrows it): it stopped reading,
                    // as with a plain completion. The connection itself is fine, and the input still in the socket
                    // is dropped by a lingering DisposeAsync like any other.
                    break;
                }

                if (flush.IsCompleted || flush.IsCanceled)
                {
                    break;
                }
            }
        }
        catch (ObjectDisposedException) when (IsDisposing)
        {
            // Our own DisposeAsync closed the socket: a normal end for the reader.
            streamEnded = true;
        }
        catch (Exception e)
        {
            // After an abort (Output completed with an exception) or a failed send, the socket is shut down both ways,
            // and Linux answers the peer's next segment with a reset that a later receive reports: a consequence of what
            // ended the connection, which Input reports instead (the application's own exception, or the send's error).
            // A receive paused by backpressure at the abort met that reset where it used to end with the peer's
            // "ConnectionReset" (AdversarialSoakTests).
            error = Volatile.Read(ref _sendFailure) ?? e;
            streamEnded = true;
        }

        await writer.CompleteAsync(error).ConfigureAwait(false);

        // Stopped by the application (it completed Input) or by DisposeAsync: the socket may still hold input. Once
        // DisposeAsync has sent everything, drop that input so that closing does not reset the connection.
        if (!streamEnded && await _linger.Task.ConfigureAwait(false))
        {
            await DiscardInputAsync().ConfigureAwait(false);
        }
    }

    private async Task DiscardInputAsync()
    {
        var scratch = new byte[16 << 10];
        try
        {
            while (await Socket.ReceiveAsync(scratch).ConfigureAwait(false) > 0)
            {
            }
        }
        catch (ObjectDisposedException) when (IsDisposing)
        {
            // DisposeAsync stopped lingering and closed the socket.
        }
        catch (SocketException)
        {
            // The peer reset the connection: nothing is left to protect.
        }
    }

    // Read → one gathered send for every buffered segment → AdvanceTo. Completing Output ends the loop after the
    // last bytes went out, and so does DisposeAsync (it cancels the pending read: what was flushed before still comes
    // with that read); then the send side is shut down so the peer reads end of stream.
    private async Task SendLoopAsync()
    {
        PipeReader reader = _output.Reader;
        Exception? error = null;
        bool disposing = false;
        try
        {
            while (true)
            {
                ReadResult result = await reader.ReadAsync().ConfigureAwait(false);
                disposing |= result.IsCanceled && IsDisposing;
                ReadOnlySequence<byte> buffer = result.Buffer;

                // One send takes at most int.MaxValue bytes; only a pipe without backpressure (PauseWriterThreshold 0)
                // can buffer more. The rest comes back at once from the next read.
                bool whole = buffer.Length <= MaximumSendSize;
                if (!whole)
                {
                    buffer = buffer.Slice(0, MaximumSendSize);
                }

                if (!buffer.IsEmpty)
                {
                    await Socket.SendAsync(buffer).ConfigureAwait(false);
                }

                reader.AdvanceTo(buffer.End);
                if ((result.IsCompleted || disposing) && whole)
                {
                    ShutdownSend();
                    _outputShutDown = true; // read by DisposeAsync once this loop's task completed
                    break;
                }
            }
        }
        catch (ObjectDisposedException) when (IsDisposing)
        {
        }
        catch (Exception e)
        {
            // The user aborted Output, or the peer went away: stop both directions of this connection only. Recorded
            // first (unless an abort already recorded its reason): the receive that reads 0 because of this shutdown
            // ends Input with it. Not EPIPE once the receive side is already shut: Linux reports EPIPE to a send after a
            // reset that followed the peer's end of stream (or after a receive took the reset), and then the 0 still to
            // come is the peer's own, complete, end — the socket layer does not report it as an error either.
            if (!(e is SocketException { SocketErrorCode: SocketError.Shutdown } && Socket.IsReceiveSideShut()))
            {
                Interlocked.CompareExchange(ref _sendFailure, e, null);
            }

            TryShutdownBoth();

            // A send that failed because of an abort (the socket shut down under it) reports the abort's reason, as
            // Input does: the application's next flush then throws what ended the connection, not the broken pipe.
            error = Volatile.Read(ref _sendFailure) ?? e;
        }

        await reader.CompleteAsync(error).ConfigureAwait(false);
    }

    private void ShutdownSend()
    {
        try
        {
            Socket.Shutdown(SocketShutdown.Send);
        }
        catch (SocketException e) when (e.SocketErrorCode == SocketError.NotConnected)
        {
            // The peer already closed: nothing left to tell it.
        }
    }

    /// <summary>
    /// <see cref="Output"/> completed with an exception: records it as what ended the connection and shuts the socket down
    /// at once, so that a send parked on a peer that stopped reading fails now (the send loop would otherwise notice the
    /// completion only after the peer drained everything buffered).
    /// </summary>
    private void Abort(Exception reason)
    {
        Interlocked.CompareExchange(ref _sendFailure, reason, null);
        TryShutdownBoth();
    }

    /// <summary>
    /// <see cref="Output"/>: the output pipe's writer, with two differences. Its first completion, when it carries an
    /// exception, aborts the connection there and then (see <see cref="Abort"/>): System.IO.Pipelines tells the reading
    /// side of a completion only at its next read, and the send loop does not read while a send is parked. And it knows
    /// when the application holds memory from <see cref="GetMemory"/>/<see cref="GetSpan"/>, so that
    /// <see cref="DisposeAsync"/> completes the pipe only when that cannot free memory still being written
    /// (<see cref="TryClaimForDispose"/>).
    /// </summary>
    /// <remarks>
    /// The holding state costs a compare-exchange per <c>GetMemory</c> and a plain store per <c>Advance</c>; both happen
    /// once per write, beside a pipe flush and a system call. A writer is one thread at a time (a
    /// <see cref="PipeWriter"/> is not thread-safe); <see cref="DisposeAsync"/> is the one other thread it races.
    /// </remarks>
    private sealed class AbortingWriter(ReactorConnection connection, PipeWriter inner) : PipeWriter
    {
        private const int Idle = 0;
        private const int Holding = 1; // between GetMemory/GetSpan and Advance: only the writer leaves this state
        private const int Claimed = 2; // DisposeAsync completes the pipe: only from Idle

        private int _completed;
        private int _use;

        public override bool CanGetUnflushedBytes => inner.CanGetUnflushedBytes;

        public override long UnflushedBytes => inner.UnflushedBytes;

        public override void Advance(int bytes)
        {
            inner.Advance(bytes);

            // Holding cannot change under us (DisposeAsync claims only Idle), so a plain store ends it; from Idle or
            // Claimed (an Advance with no GetMemory before it) nothing is held and nothing changes.
            if (_use == Holding)
            {
                Volatile.Write(ref _use, Idle);
            }
        }

        public override void CancelPendingFlush() => inner.CancelPendingFlush();

        public override void Complete(Exception? exception = null)
        {
            AbortIfFirstCompletionFailed(exception);
            inner.Complete(exception);
        }

        public override ValueTask CompleteAsync(Exception? exception = null)
        {
            AbortIfFirstCompletionFailed(exception);
            return inner.CompleteAsync(exception);
        }

        public override ValueTask<FlushResult> FlushAsync(CancellationToken cancellationToken = default)
        {
            ThrowIfDisposed();
            return inner.FlushAsync(cancellationToken);
        }

        public override Memory<byte> GetMemory(int sizeHint = 0)
        {
            Hold();
            return inner.GetMemory(sizeHint);
        }

        public override Span<byte> GetSpan(int sizeHint = 0)
        {
            Hold();
            return inner.GetSpan(sizeHint);
        }

        public override ValueTask<FlushResult> WriteAsync(ReadOnlyMemory<byte> source, CancellationToken cancellationToken = default)
        {
            // The pipe copies the source into its own memory before this returns: held only for that long.
            Hold();
            try
            {
                return inner.WriteAsync(source, cancellationToken);
            }
            finally
            {
                Volatile.Write(ref _use, Idle);
            }
        }

        /// <summary>DisposeAsync: true when no memory is held, and none can be from now on (the pipe may be completed).</summary>
        public bool TryClaimForDispose() => Interlocked.CompareExchange(ref _use, Claimed, Idle) == Idle;

        private void Hold()
        {
            // The compare-exchange is also the fence before the disposal check (DisposeAsync sets _disposed, then claims):
            // either DisposeAsync sees Holding and leaves the pipe alone, or this sees it disposing and throws. A claim
            // made first leaves Claimed in place, and the check throws: claims happen only once disposal began.
            if (Volatile.Read(ref _use) == Idle)
            {
                Interlocked.CompareExchange(ref _use, Holding, Idle);
            }

            ThrowIfDisposed();
        }

        private void ThrowIfDisposed()
        {
            if (connection.IsDisposing)
            {
                ThrowDisposed();
            }
        }

        [DoesNotReturn]
        private static void ThrowDisposed() => throw new ObjectDisposedException(nameof(ReactorConnection), "The connection was disposed; its Output takes no more writes.");

        // Only the first completion counts, as for the pipe's own writer: an orderly Complete() followed by a
        // Complete(exception) does not cut off the drain that the first one started.
        private void AbortIfFirstCompletionFailed(Exception? exception)
        {
            if (Interlocked.Exchange(ref _completed, 1) == 0 && exception is not null)
            {
                connection.Abort(exception);
            }
        }
    }

    private void TryShutdownBoth()
    {
        try
        {
            Socket.Shutdown(SocketShutdown.Both);
        }
        catch (SocketException)
        {
        }
        catch (ObjectDisposedException)
        {
        }
    }
}
