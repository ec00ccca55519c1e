using System.Buffers;
using System.IO.Pipelines;
using Scheduler.IO;

namespace Scheduler.Tests.IO;

/// <summary>
/// Both pipes of both ends of a connection pause and resume many times (thresholds of a few KB) while writers and
/// readers take random chunk sizes and random pauses: every byte must come back, in order, through an echo.
/// </summary>
public sealed class PipeBackpressureStressTests
{
    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(3)]
    public async Task Random_chunks_and_pauses_through_paused_pipes_lose_and_reorder_nothing(int seed)
    {
        const int Length = 3 << 20;
        byte[] data = IoTestContext.Pattern(Length, seed);
        await using var io = new IoTestContext();
        using ReactorSocket listener = io.Listen();
        var options = new PipeOptions(
            pauseWriterThreshold: 8 * 1024,
            resumeWriterThreshold: 2 * 1024,
            minimumSegmentSize: 512,
            readerScheduler: io.Scheduler.PipeScheduler,
            writerScheduler: io.Scheduler.PipeScheduler,
            useSynchronizationContext: false);
        (ReactorSocket client, ReactorSocket server) = await io.ConnectPairOnSchedulerAsync(listener);
        var serverConnection = ReactorConnection.Create(server, options, options);
        await using var disposeServerConnection = IoTestContext.DisposeWithin(serverConnection);
        var clientConnection = ReactorConnection.Create(client, options, options);
        await using var disposeClientConnection = IoTestContext.DisposeWithin(clientConnection);

        Task echo = io.Run(() => SlowEchoAsync(serverConnection, new Random(seed * 7)));
        Task write = io.Run(async () =>
        {
            var random = new Random(seed * 11);
            int offset = 0;
            while (offset < Length)
            {
                int length = Math.Min(random.Next(1, 40_000), Length - offset);
                FlushResult flush = await clientConnection.Output.WriteAsync(data.AsMemory(offset, length));
                flush.IsCompleted.Should().BeFalse();
                offset += length;
                await PauseAsync(random);
            }

            await clientConnection.Output.CompleteAsync();
        });

        byte[] echoed = await io.Run(async () =>
        {
            var random = new Random(seed * 13);
            var all = new ArrayBufferWriter<byte>(Length);
            while (true)
            {
                ReadResult result = await clientConnection.Input.ReadAsync();
                ReadOnlySequence<byte> buffer = result.Buffer;

                // Consume a random part (never nothing: a reader that consumes nothing while the pipe is paused waits forever,
                // by the pipe's design), having examined everything.
                long take = result.IsCompleted ? buffer.Length : random.NextInt64(1, buffer.Length + 1);
                foreach (ReadOnlyMemory<byte> segment in buffer.Slice(0, take))
                {
                    all.Write(segment.Span);
                }

                clientConnection.Input.AdvanceTo(buffer.GetPosition(take), buffer.End);
                if (result.IsCompleted)
                {
                    return all.WrittenSpan.ToArray();
                }

                await PauseAsync(random);
            }
        }, TimeSpan.FromSeconds(60));

        await write;
        await echo;
        echoed.Length.Should().Be(Length);
        int mismatch = echoed.AsSpan().CommonPrefixLength(data);
        mismatch.Should().Be(Length, "every byte comes back in order (first difference at that offset)");
    }

    private static async Task SlowEchoAsync(ReactorConnection connection, Random random)
    {
        while (true)
        {
            ReadResult result = await connection.Input.ReadAsync();
            ReadOnlySequence<byte> buffer = result.Buffer;
            long take = result.IsCompleted ? buffer.Length : random.NextInt64(1, buffer.Length + 1);
            foreach (ReadOnlyMemory<byte> segment in buffer.Slice(0, take))
            {
                FlushResult flush = await connection.Output.WriteAsync(segment);
                flush.IsCompleted.Should().BeFalse();
            }

            connection.Input.AdvanceTo(buffer.GetPosition(take), buffer.End);
            if (result.IsCompleted)
            {
                await connection.Output.CompleteAsync();
                return;
            }

            await PauseAsync(random);
        }
    }

    // Mostly none, sometimes a yield, rarely a millisecond: the other side overtakes and the pipes fill up.
    private static async Task PauseAsync(Random random)
    {
        switch (random.Next(20))
        {
            case 0:
                await Task.Delay(1);
                break;
            case < 5:
                await Task.Yield();
                break;
        }
    }
}
