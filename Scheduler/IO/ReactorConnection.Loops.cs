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
        try
        {
            while (true)
            {
                Memory<byte> memory = writer.GetMemory(MinimumReceiveSize);
                int received = await Socket.ReceiveAsync(memory);
                if (received == 0)
                {
                    break;
                }

                writer.Advance(received);
                FlushResult flush = await writer.FlushAsync();
                if (flush.IsCompleted || flush.IsCanceled)
                {
                    break;
                }
            }
        }
        catch (ObjectDisposedException) when (IsDisposing)
        {
            // Our own DisposeAsync closed the socket: a normal end for the reader.
        }
        catch (Exception e)
        {
            error = e;
        }

        await writer.CompleteAsync(error);
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
            // The user aborted Output, or the peer went away: stop both directions of this connection only.
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
