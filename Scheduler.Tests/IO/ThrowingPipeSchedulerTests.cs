using System.IO.Pipelines;
using System.Net.Sockets;
using Scheduler.IO;

namespace Scheduler.Tests.IO;

/// <summary>
/// A user's <see cref="PipeScheduler"/> whose <c>Schedule</c> throws (docs/io.md, "Schedulers"). System.IO.Pipelines takes
/// the continuation out before it schedules it, so a throw dropped it: an application's read or flush, or one of the
/// connection's own loops, never resumed, and <see cref="ReactorConnection.DisposeAsync"/> waited forever for the loop.
/// A connection now runs such a continuation on the ThreadPool and aborts itself with the scheduler's exception, which
/// <see cref="ReactorConnection.Input"/> then reports; nothing hangs, and other connections are untouched.
/// </summary>
[Collection(nameof(IoStressGroup))]
public sealed class ThrowingPipeSchedulerTests
{
    private static readonly TimeSpan Guard = TimeSpan.FromSeconds(10);

    /// <summary>Which of the four pipe schedulers throws: the application's side or the connection's loops' side.</summary>
    public enum Position
    {
        InputReader, // the application's ReadAsync continuation
        InputWriter, // the receive loop's continuation after backpressure
        OutputReader, // the send loop's read continuation
        OutputWriter, // the application's FlushAsync continuation after backpressure
    }

    [Theory]
    [InlineData(Position.InputReader)]
    [InlineData(Position.InputWriter)]
    [InlineData(Position.OutputReader)]
    [InlineData(Position.OutputWriter)]
    public async Task A_throwing_Schedule_aborts_that_connection_with_its_exception_and_nothing_waits_forever(Position position)
    {
        await using var io = new IoTestContext();
        var throwing = new ThrowingScheduler();
        PipeOptions Options(PipeScheduler reader, PipeScheduler writer) =>
            new(readerScheduler: reader, writerScheduler: writer, pauseWriterThreshold: 1, resumeWriterThreshold: 0, useSynchronizationContext: false);
        PipeOptions input = position switch
        {
            Position.InputReader => Options(throwing, PipeScheduler.ThreadPool),
            Position.InputWriter => Options(PipeScheduler.ThreadPool, throwing),
            _ => Options(PipeScheduler.ThreadPool, PipeScheduler.ThreadPool),
        };
        PipeOptions output = position switch
        {
            Position.OutputReader => Options(throwing, PipeScheduler.ThreadPool),
            Position.OutputWriter => Options(PipeScheduler.ThreadPool, throwing),
            _ => Options(PipeScheduler.ThreadPool, PipeScheduler.ThreadPool),
        };

        using ReactorSocket listener = io.Listen();
        (ReactorSocket peer, ReactorSocket server) = await io.ConnectPairOnSchedulerAsync(listener);
        var connection = ReactorConnection.Create(server, input, output);
        using (peer)
        {
            // The application echoes until Input ends, and keeps what ended it.
            Task<Exception?> serving = Task.Run(async () =>
            {
                try
                {
                    while (true)
                    {
                        ReadResult result = await connection.Input.ReadAsync();
                        foreach (ReadOnlyMemory<byte> segment in result.Buffer)
                        {
                            await connection.Output.WriteAsync(segment);
                        }

                        connection.Input.AdvanceTo(result.Buffer.End);
                        if (result.IsCompleted)
                        {
                            return null;
                        }
                    }
                }
                catch (Exception e)
                {
                    return e;
                }
            });

            // The peer sends in small pieces and reads the echo, until the connection ends one way or another.
            byte[] data = IoTestContext.Pattern(200_000, 5);
            Task sending = io.Run(async () =>
            {
                try
                {
                    for (int offset = 0; offset < data.Length; offset += 4096)
                    {
                        await peer.SendAsync(data.AsMemory(offset, Math.Min(4096, data.Length - offset)));
                    }
                }
                catch (SocketException)
                {
                    // The aborted connection reset the peer.
                }
            }, Guard);
            Task receiving = io.Run(async () =>
            {
                var buffer = new byte[64 << 10];
                try
                {
                    while (await peer.ReceiveAsync(buffer) > 0)
                    {
                    }
                }
                catch (SocketException)
                {
                }
            }, Guard);

            Exception? ended = await serving.WaitAsync(Guard);
            throwing.Throws.Should().BeGreaterThan(0, "the workload made the pipe schedule on the throwing scheduler");
            ended.Should().NotBeNull("the connection was aborted: Input does not end as if the peer had finished");
            ended.Should().BeOfType<InvalidOperationException>().Which.InnerException.Should().BeSameAs(throwing.FirstThrown, "Input reports the scheduler's first failure");
            ended!.Message.Should().Be(
                $"The connection's PipeScheduler ({typeof(ThrowingScheduler).FullName}) threw from Schedule; the connection was aborted and the callback ran on the ThreadPool.",
                "the error names the scheduler and says what became of the connection and the callback");
            await connection.DisposeAsync().AsTask().WaitAsync(Guard);
            await sending;
            await receiving;
        }

        // Another connection of the same reactor is untouched.
        (ReactorConnection other, ReactorSocket client) = await io.ConnectionPairAsync();
        using (client)
        {
            await io.Run(() => client.SendAsync(new byte[] { 42 }).AsTask(), Guard);
            ReadResult read = await other.Input.ReadAsync().AsTask().WaitAsync(Guard);
            read.Buffer.FirstSpan[0].Should().Be(42);
            other.Input.AdvanceTo(read.Buffer.End);
            await other.DisposeAsync().AsTask().WaitAsync(Guard);
        }
    }

    /// <summary>A scheduler that throws from every <c>Schedule</c>.</summary>
    private sealed class ThrowingScheduler : PipeScheduler
    {
        private int _throws;
        private Exception? _firstThrown;

        public int Throws => Volatile.Read(ref _throws);

        public Exception? FirstThrown => Volatile.Read(ref _firstThrown);

        public override void Schedule(Action<object?> action, object? state)
        {
            var failure = new NotSupportedException("this scheduler refuses every callback");
            Interlocked.CompareExchange(ref _firstThrown, failure, null);
            Interlocked.Increment(ref _throws);
            throw failure;
        }
    }
}
