using System.Buffers;
using System.IO.Pipelines;
using System.Net.Sockets;
using Scheduler.IO;

namespace Scheduler.Tests.IO;

/// <summary>API.md promises about the reactor, sockets and connections that no other test pinned down on its own.</summary>
public sealed class IoContractTests
{
    [Fact]
    public async Task Reactor_exposes_the_scheduler_it_was_created_with()
    {
        await using var io = new IoTestContext();
        io.Reactor.Scheduler.Should().BeSameAs(io.Scheduler);
    }

    [Fact]
    public async Task Cancelled_send_throws_OperationCanceledException_and_the_socket_stays_usable()
    {
        await using var io = new IoTestContext();
        using ReactorSocket listener = io.Listen();
        await io.RunOnPair(listener, async (client, server) =>
        {
            // Nobody reads the server side yet: a big send fills the kernel buffers and stays pending.
            using var cts = new CancellationTokenSource();
            ValueTask<int> stuck = client.SendAsync(new byte[64 << 20], cts.Token);
            stuck.IsCompleted.Should().BeFalse();
            await cts.CancelAsync();
            Func<Task> awaiting = async () => await stuck;
            (await awaiting.Should().ThrowAsync<OperationCanceledException>()).Which.CancellationToken.Should().Be(cts.Token);

            // Usable afterwards: the server drains what the cancelled send handed to the kernel, then a new send's
            // bytes arrive after it, and the other direction works too.
            Task<(long Total, byte[] Tail)> draining = DrainToEndAsync(server);
            byte[] marker = Enumerable.Repeat((byte)0xAB, 16).ToArray();
            (await client.SendAsync(marker)).Should().Be(marker.Length);
            client.Shutdown(SocketShutdown.Send);
            (long total, byte[] tail) = await draining;
            total.Should().BeGreaterThanOrEqualTo(marker.Length);
            tail.Should().Equal(marker);

            (await server.SendAsync(new byte[] { 7 })).Should().Be(1);
            var back = new byte[1];
            await IoTestContext.ReceiveExactlyAsync(client, back);
            back[0].Should().Be(7);
        });
    }

    [Fact]
    public async Task Input_resumes_at_the_resume_threshold_and_never_holds_more_than_the_pause_threshold_unexamined()
    {
        const int Pause = 24 * 1024;
        const int Resume = 12 * 1024;
        const int Length = 2 << 20;
        await using var io = new IoTestContext();
        using ReactorSocket listener = io.Listen();
        (ReactorSocket client, ReactorSocket server) = await io.ConnectPairOnSchedulerAsync(listener);
        var options = new PipeOptions(pauseWriterThreshold: Pause, resumeWriterThreshold: Resume, readerScheduler: io.Scheduler.PipeScheduler,
            writerScheduler: io.Scheduler.PipeScheduler, useSynchronizationContext: false);
        await using var connection = ReactorConnection.Create(server, options);
        using (client)
        {
            byte[] message = IoTestContext.Pattern(Length, 21);
            Task sending = io.Run(async () => await client.SendAsync(message));
            var received = new byte[Length];
            int count = 0;
            long maxBuffered = 0;
            long maxUnexamined = 0;
            long examinedNotConsumed = 0;
            int pauses = 0;

            await io.Run(async () =>
            {
                while (count < Length)
                {
                    // Once the receive loop is paused, it must resume by itself when we go below the resume threshold:
                    // a read that waits for more data would otherwise wait forever.
                    ReadResult result = await connection.Input.ReadAsync().AsTask().WaitAsync(TimeSpan.FromSeconds(10));
                    ReadOnlySequence<byte> buffer = result.Buffer;
                    maxBuffered = Math.Max(maxBuffered, buffer.Length);
                    maxUnexamined = Math.Max(maxUnexamined, buffer.Length - examinedNotConsumed);
                    long take;
                    if (count + buffer.Length == Length)
                    {
                        take = buffer.Length; // the last bytes: no pause to wait for
                    }
                    else if (buffer.Length >= Pause)
                    {
                        // The receive loop is paused: go just below the resume threshold, then wait for more.
                        pauses++;
                        take = buffer.Length - (Resume - 2048);
                    }
                    else
                    {
                        // Consume nothing until the buffer reaches the pause threshold.
                        take = 0;
                    }

                    buffer.Slice(0, take).CopyTo(received.AsSpan(count));
                    count += (int)take;
                    connection.Input.AdvanceTo(buffer.GetPosition(take), buffer.End);
                    examinedNotConsumed = buffer.Length - take;
                    result.IsCompleted.Should().BeFalse("the peer has not shut down");
                }
            }, TimeSpan.FromSeconds(60));

            await sending.WaitAsync(IoTestContext.Timeout);
            received.AsSpan().SequenceEqual(message).Should().BeTrue();
            pauses.Should().BePositive("the reader held the pause threshold at least once");
            // System.IO.Pipelines pauses the writer on the bytes the reader has not EXAMINED: examined but unconsumed
            // bytes (this reader examines everything and consumes nothing below the threshold) no longer count, so a
            // parser waiting for a whole message cannot deadlock. Bounding the whole buffer by the threshold held only
            // while the reader kept up; descheduled on a loaded machine, it found 42 KiB. One receive (a pool segment,
            // 4 KiB by default) can land on top of what is below the threshold.
            maxUnexamined.Should().BeLessThan(Pause + 16 * 1024, "Input leaves no more than its pause threshold plus one receive unexamined");
            maxBuffered.Should().BeLessThan((2 * Pause) + (16 * 1024), "what the reader examined but kept is below the threshold too");
        }
    }

    private static async Task<(long Total, byte[] Tail)> DrainToEndAsync(ReactorSocket socket)
    {
        const int TailLength = 16;
        var buffer = new byte[64 * 1024];
        var tail = new byte[TailLength];
        long total = 0;
        while (true)
        {
            int n = await socket.ReceiveAsync(buffer);
            if (n == 0)
            {
                return (total, tail[(int)Math.Max(0, TailLength - total)..]);
            }

            total += n;
            if (n >= TailLength)
            {
                buffer.AsSpan(n - TailLength, TailLength).CopyTo(tail);
            }
            else
            {
                tail.AsSpan(n).CopyTo(tail);
                buffer.AsSpan(0, n).CopyTo(tail.AsSpan(TailLength - n));
            }
        }
    }
}
