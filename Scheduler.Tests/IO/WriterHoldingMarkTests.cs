using System.Buffers;
using System.Diagnostics;
using System.IO.Pipelines;
using System.Net.Sockets;
using Scheduler.IO;
using Scheduler.Tests.Scheduling;

namespace Scheduler.Tests.IO;

/// <summary>
/// The mark by which <see cref="ReactorConnection.Output"/> knows that the application holds memory from the pipe
/// (between <c>GetMemory</c>/<c>GetSpan</c> and <c>Advance</c>): <see cref="ReactorConnection.DisposeAsync"/> leaves the
/// output pipe uncompleted while it is set, so a mark left behind by a write that holds nothing any more keeps the pipe's
/// blocks from ever going back to the <see cref="MemoryPool{T}"/> of the connection's <see cref="PipeOptions"/>.
/// </summary>
[Collection(nameof(IoStressGroup))]
public sealed class WriterHoldingMarkTests
{
    private const int ChunkLength = 16 << 10;

    /// <summary>
    /// Kills I19: ReactorConnection.Loops.cs AbortingWriter.WriteAsync without its <c>finally</c> that clears the holding
    /// mark (<c>Volatile.Write(ref _use, Idle)</c>). <c>WriteAsync</c> copies the source into the pipe before it returns, so
    /// nothing is held afterwards; with the mark left set, <c>TryClaimForDispose</c> failed, DisposeAsync never completed
    /// the output pipe's writer, and the bytes the peer had not taken yet (the pipe's blocks) were never given back to the
    /// pool: the send loop completes only the reader, and a pipe frees its blocks once both ends are complete. Bytes the
    /// peer did take are no witness (the pipe returns a block as soon as it is consumed), hence a peer that stops reading.
    /// </summary>
    [Fact]
    public Task DisposeAsync_after_a_WriteAsync_the_peer_never_read_gives_every_output_block_back_to_the_pool() =>
        DisposeReturnsEveryBlockAsync(static (writer, chunk) => writer.WriteAsync(chunk));

    /// <summary>
    /// Control for <see cref="DisposeAsync_after_a_WriteAsync_the_peer_never_read_gives_every_output_block_back_to_the_pool"/>:
    /// the same scenario with <c>GetMemory</c>, <c>Advance</c> and <c>FlushAsync</c> as the last write, where
    /// <c>Advance</c> clears the mark (this one passes with or without I19).
    /// </summary>
    [Fact]
    public Task DisposeAsync_after_GetMemory_Advance_and_FlushAsync_the_peer_never_read_gives_every_output_block_back_to_the_pool() =>
        DisposeReturnsEveryBlockAsync(static (writer, chunk) =>
        {
            chunk.CopyTo(writer.GetMemory(chunk.Length));
            writer.Advance(chunk.Length);
            return writer.FlushAsync();
        });

    /// <summary>
    /// One round the peer reads (the connection works and the pool is the output pipe's), then writes the peer never
    /// reads until a flush waits on backpressure (bytes left in the output pipe), then DisposeAsync: every block the
    /// pool handed out must come back.
    /// </summary>
    private static async Task DisposeReturnsEveryBlockAsync(Func<PipeWriter, ReadOnlyMemory<byte>, ValueTask<FlushResult>> write)
    {
        await using var io = new IoTestContext();
        var pool = new CountingMemoryPool(1 << 20);
        var outputOptions = new PipeOptions(
            pool: pool,
            readerScheduler: io.Scheduler.PipeScheduler,
            writerScheduler: io.Scheduler.PipeScheduler,
            pauseWriterThreshold: 64 << 10,
            resumeWriterThreshold: 32 << 10,
            useSynchronizationContext: false);
        using ReactorSocket listener = io.Listen();
        using Socket peer = IoTestContext.NewPlainSocket();
        peer.ReceiveBufferSize = 4096; // a peer that stops reading soon stops the kernels taking more
        ReactorSocket server = await io.AcceptConnectedAsync(listener, peer);
        var connection = ReactorConnection.Create(server, inputOptions: null, outputOptions);
        await using var disposeConnection = IoTestContext.DisposeWithin(connection);

        // A round the peer reads: the connection carries what is written, through the pool's blocks.
        byte[] greeting = IoTestContext.Pattern(100, 19);
        await io.Run(async () => await write(connection.Output, greeting));
        var received = new byte[greeting.Length];
        await IoTestContext.ReceiveExactlyAsync(peer, received).WithTimeout("The peer's receive of the first round", IoTestContext.Timeout);
        received.Should().Equal(greeting);
        pool.Rented.Should().BeGreaterThan(0, "the output pipe takes its blocks from the pool of its options");

        // The peer reads no more: write until a flush waits on backpressure, so bytes stay in the output pipe.
        Task<FlushResult> pending = await io.Run(async () =>
        {
            byte[] chunk = IoTestContext.Pattern(ChunkLength, 23);
            for (int i = 0; i < 16384; i++)
            {
                ValueTask<FlushResult> flush = write(connection.Output, chunk);
                if (flush.IsCompleted)
                {
                    await flush;
                    continue;
                }

                Task<FlushResult> waiting = flush.AsTask();
                if (await Task.WhenAny(waiting, Task.Delay(300)) != waiting)
                {
                    return waiting;
                }

                await waiting;
            }

            throw new InvalidOperationException("the output was never paused by a peer that stopped reading");
        });
        pool.Outstanding.Should().BeGreaterThan(0, "unsent bytes wait in the output pipe's blocks");

        await connection.DisposeAsync().AsTask().WithTimeout("ReactorConnection.DisposeAsync", IoTestContext.Timeout);
        await pending.WithTimeout("The flush waiting on backpressure when the connection was disposed", IoTestContext.Timeout);

        // The send loop completes the pipe's reader before DisposeAsync returns; bounded polling only for robustness.
        var clock = Stopwatch.StartNew();
        while (pool.Outstanding != 0 && clock.Elapsed < TimeSpan.FromSeconds(10))
        {
            await Task.Delay(20);
        }

        pool.Outstanding.Should().Be(
            0,
            "DisposeAsync completes Output when no memory is held, and then the pipe gives every block back ({0} rented)",
            pool.Rented);
    }
}
