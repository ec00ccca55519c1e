using System.Buffers;
using System.IO.Pipelines;
using System.Net.Sockets;

namespace Scheduler.IO;

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
                int received = await Socket.ReceiveAsync(memory);
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
                    flush = await writer.FlushAsync();
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
            error = e;
            streamEnded = true;
        }

        await writer.CompleteAsync(error);

        // Stopped by the application (it completed Input) or by DisposeAsync: the socket may still hold input. Once
        // DisposeAsync has sent everything, drop that input so that closing does not reset the connection.
        if (!streamEnded && await _linger.Task)
        {
            await DiscardInputAsync();
        }
    }

    private async Task DiscardInputAsync()
    {
        var scratch = new byte[16 << 10];
        try
        {
            while (await Socket.ReceiveAsync(scratch) > 0)
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
    // last bytes went out; then the send side is shut down so the peer reads end of stream.
    private async Task SendLoopAsync()
    {
        PipeReader reader = _output.Reader;
        Exception? error = null;
        try
        {
            while (true)
            {
                ReadResult result = await reader.ReadAsync();
                if (result.IsCanceled)
                {
                    break;
                }

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
                    await Socket.SendAsync(buffer);
                }

                reader.AdvanceTo(buffer.End);
                if (result.IsCompleted && whole)
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
            error = e;
            // The user aborted Output, or the peer went away: stop both directions of this connection only. Recorded
            // first: the receive that reads 0 because of this shutdown ends Input with it.
            Volatile.Write(ref _sendFailure, e);
            TryShutdownBoth();
        }

        await reader.CompleteAsync(error);
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
