using System.Buffers;
using System.Diagnostics;
using System.IO.Pipelines;
using System.Net.Sockets;
using Scheduler.IO;
using Scheduler.Tests.Scheduling;
using Scheduler.Tests.Sources;

namespace Scheduler.Tests.IO;

/// <summary>
/// With <see cref="PipeScheduler.Inline"/> on a loop's side of a pipe (the <c>Input</c> writer's, the <c>Output</c>
/// reader's), a connection's loop resumes on whatever thread released it: the application's, inside its
/// <c>AdvanceTo</c> or <c>FlushAsync</c>, under the application's <see cref="SynchronizationContext"/>. The loop's next
/// socket operation must not capture that context: its thread may be a single-threaded one blocked until the
/// connection finishes (a UI thread, sync over async), and then the loop's continuation, posted there, never ran — the
/// connection stopped receiving (or sending) for good, and its <c>DisposeAsync</c> waited for that loop forever.
/// </summary>
public sealed class ReactorConnectionInlineContextTests
{
    // Each step takes milliseconds; the bound only ends a test whose loop never resumed (the bug: it waits forever).
    // 5 s was too close: under load a step (4 MiB through loopback, a pool thread to resume) has taken seconds.
    private static readonly TimeSpan Bound = TimeSpan.FromSeconds(20);

    /// <summary>
    /// The application's own side, with the default pipe options: a read awaited under the application's context resumes
    /// on the reactor's scheduler, as documented (<c>useSynchronizationContext: false</c>), not through the context (a
    /// UI thread, or one blocked in sync over async). The options are made once per reactor and shared. Kills:
    /// IoReactor.cs DefaultPipeOptions, <c>useSynchronizationContext: false</c> made <c>true</c>, and <c>??=</c> made
    /// <c>=</c>.
    /// </summary>
    [Fact]
    public async Task A_read_awaited_under_the_applications_context_resumes_on_the_scheduler_with_the_default_options()
    {
        await using var io = new IoTestContext();
        (ReactorConnection connection, ReactorSocket client) = await io.ConnectionPairAsync();
        await using var disposeConnection = IoTestContext.DisposeWithin(connection);
        using var disposeClient = client;
        io.Reactor.DefaultPipeOptions.Should().BeSameAs(io.Reactor.DefaultPipeOptions, "one set of default options per reactor");

        var context = new RecordingSynchronizationContext();
        Task<(long Length, bool OnWorker)> read = RunUnder(context, async () =>
        {
            ReadResult result = await connection.Input.ReadAsync();
            long length = result.Buffer.Length;
            connection.Input.AdvanceTo(result.Buffer.End);
            return (length, io.Scheduler.IsWorkerThread);
        });
        read.IsCompleted.Should().BeFalse("nothing was sent yet");

        (await client.SendAsync(new byte[] { 1, 2, 3 })).Should().Be(3);
        (long length, bool onWorker) = await read.WaitAsync(Bound);
        length.Should().Be(3);
        context.Posts.Should().Be(0, "the connection's pipes do not capture the application's context by default");
        onWorker.Should().BeTrue("the read resumes on the reactor's scheduler");
    }

    private static Task<T> RunUnder<T>(SynchronizationContext context, Func<Task<T>> body)
    {
        SynchronizationContext? previous = SynchronizationContext.Current;
        SynchronizationContext.SetSynchronizationContext(context);
        try
        {
            return body();
        }
        finally
        {
            SynchronizationContext.SetSynchronizationContext(previous);
        }
    }

    [Fact]
    public async Task Receive_loop_resumed_inline_by_the_applications_AdvanceTo_never_posts_to_its_context()
    {
        var blocked = new BlockedSynchronizationContext();
        await ReceiveAfterAnInlineAdvanceAsync(blocked.Run, () => blocked.Posts, "the receive loop's continuation must not be posted to the application's context");
    }

    [Fact]
    public async Task Send_loop_resumed_inline_by_the_applications_FlushAsync_never_posts_to_its_context()
    {
        await using var io = new IoTestContext();
        using ReactorSocket listener = io.Listen();
        using Socket peer = IoTestContext.NewPlainSocket();
        peer.ReceiveBufferSize = 4 << 10;
        var outputOptions = new PipeOptions(readerScheduler: PipeScheduler.Inline, useSynchronizationContext: false);
        var connection = ReactorConnection.Create(await io.AcceptConnectedAsync(listener, peer), outputOptions: outputOptions);

        // The flush hands the send loop its input inline, on this thread; the peer does not read yet, so the loop's send
        // fills the kernel's buffers and then waits for room from here.
        const int Length = 4 << 20;
        ValueTask<FlushResult> flush = default;
        var blocked = new BlockedSynchronizationContext();
        blocked.Run(() =>
        {
            connection.Output.Write(new byte[Length]);
            flush = connection.Output.FlushAsync();
        });

        Task received = IoTestContext.ReceiveExactlyAsync(peer, new byte[Length]);
        bool all = await received.WaitAsync(Bound).ContinueWith(t => t.IsCompletedSuccessfully, TaskScheduler.Default);

        // The flush completes once the send loop has handed everything to the kernel and advanced past it: the peer may
        // have read the last byte before the loop's completed send resumed it, so the post can come after the read.
        bool flushed = await flush.AsTask().WaitAsync(Bound).ContinueWith(t => t.IsCompletedSuccessfully, TaskScheduler.Default);
        blocked.Posts.Should().Be(0, "the send loop's continuation must not be posted to the application's context");
        all.Should().BeTrue("everything flushed reaches the peer once it reads");
        flushed.Should().BeTrue("the application's FlushAsync completes once the send loop has sent everything");
        await connection.DisposeAsync().AsTask().WithTimeout("the connection's DisposeAsync", IoTestContext.Timeout);
    }

    /// <summary>
    /// The same with the pipe's own context capture on (<c>useSynchronizationContext: true</c>, what
    /// <see cref="PipeOptions"/> defaults to): resumed inline by the application's flush, the send loop sends at once and
    /// reads again on the application's thread, under its context. That read must not capture the context either, or
    /// the application's next flush is posted to it and never sent. Kills: ReactorConnection.Loops.cs SendLoopAsync,
    /// <c>reader.ReadAsync().ConfigureAwait(false)</c> made <c>ConfigureAwait(true)</c>.
    /// </summary>
    [Fact]
    public async Task Send_loop_reading_again_under_the_applications_context_does_not_capture_it_when_the_pipe_would()
    {
        await using var io = new IoTestContext();
        using ReactorSocket listener = io.Listen();
        using Socket peer = IoTestContext.NewPlainSocket();
        var outputOptions = new PipeOptions(readerScheduler: PipeScheduler.Inline, useSynchronizationContext: true);
        var connection = ReactorConnection.Create(await io.AcceptConnectedAsync(listener, peer), outputOptions: outputOptions);
        await using var disposeConnection = IoTestContext.DisposeWithin(connection);

        // A first message from a worker: once the peer has it, the send loop waits in its next read.
        byte[] warmUp = IoTestContext.Pattern(100, 1);
        await io.Run(async () => await connection.Output.WriteAsync(warmUp));
        var received = new byte[warmUp.Length];
        await IoTestContext.ReceiveExactlyAsync(peer, received).WaitAsync(Bound);

        var blocked = new BlockedSynchronizationContext();
        foreach (byte seed in new byte[] { 2, 3 })
        {
            // Small enough to be sent at once: the loop resumed by this flush reads again right here, under the context.
            byte[] message = IoTestContext.Pattern(100, seed);
            Task<FlushResult>? flush = null;
            blocked.Run(() =>
            {
                connection.Output.Write(message);
                flush = connection.Output.FlushAsync().AsTask();
            });
            var got = new byte[message.Length];
            bool arrived = await IoTestContext.ReceiveExactlyAsync(peer, got).WaitAsync(Bound).ContinueWith(t => t.IsCompletedSuccessfully, TaskScheduler.Default);
            blocked.Posts.Should().Be(0, "the send loop's read must not capture the application's context");
            arrived.Should().BeTrue();
            got.Should().Equal(message);
            (await flush!.WaitAsync(Bound)).IsCompleted.Should().BeFalse("Output is not completed");
        }
    }

    /// <summary>
    /// The receive loop's side of the same: with the pipe's own context capture on, the loop resumed inline by the
    /// application's <c>AdvanceTo</c> finds more input waiting, receives it at once and flushes it on the application's
    /// thread, under its context, where the flush pauses again. That flush must not capture the context, or the
    /// application's next <c>AdvanceTo</c> posts the loop to it and no more input arrives. Kills:
    /// ReactorConnection.Loops.cs ReceiveLoopAsync, <c>writer.FlushAsync().ConfigureAwait(false)</c> made <c>true</c>.
    /// </summary>
    [Fact]
    public async Task Receive_loop_flushing_again_under_the_applications_context_does_not_capture_it_when_the_pipe_would()
    {
        await using var io = new IoTestContext();
        using ReactorSocket listener = io.Listen();
        using Socket peer = IoTestContext.NewPlainSocket();
        var inputOptions = IoTestContext.PausingPast64Bytes(PipeScheduler.Inline, useSynchronizationContext: true);
        var connection = ReactorConnection.Create(await io.AcceptConnectedAsync(listener, peer), inputOptions);
        await using var disposeConnection = IoTestContext.DisposeWithin(connection);
        var blocked = new BlockedSynchronizationContext();

        // The first kilobyte pauses the loop's flush (over 64 bytes); the second waits in the socket meanwhile.
        await peer.SendAsync(new byte[1024]);
        ReadResult first = await connection.Input.ReadAsync().AsTask().WaitAsync(Bound);
        await peer.SendAsync(new byte[1024]);
        Thread.Sleep(50); // loopback delivers at once; a later arrival only makes the loop wait in a receive instead
        long total = first.Buffer.Length;
        blocked.Run(() => connection.Input.AdvanceTo(first.Buffer.End));

        // Everything else is consumed under the context too, as a UI thread would.
        var elapsed = Stopwatch.StartNew();
        while (total < 2048)
        {
            elapsed.Elapsed.Should().BeLessThan(Bound, "the second kilobyte reaches Input");
            if (!connection.Input.TryRead(out ReadResult result))
            {
                Thread.Sleep(1);
                continue;
            }

            total += result.Buffer.Length;
            blocked.Run(() => connection.Input.AdvanceTo(result.Buffer.End));
        }

        await peer.SendAsync(new byte[] { 7 });
        ReadResult next = await connection.Input.ReadAsync().AsTask().WaitAsync(Bound).ContinueWith(
            t => t.IsCompletedSuccessfully ? t.Result : default, TaskScheduler.Default);
        blocked.Posts.Should().Be(0, "the receive loop's flush must not capture the application's context");
        next.Buffer.Length.Should().Be(1, "the byte sent afterwards reaches Input");
        connection.Input.AdvanceTo(next.Buffer.End);
    }

    [Fact]
    public async Task Receive_loop_resumed_inline_inside_a_task_of_the_applications_TaskScheduler_never_queues_to_it()
    {
        // The same with a TaskScheduler instead of a context: AdvanceTo called inside a task of the application's own
        // scheduler (an exclusive scheduler, say) whose threads are all busy until the data arrives.
        var blocked = new BlockedTaskScheduler();
        await ReceiveAfterAnInlineAdvanceAsync(blocked.RunHere, () => blocked.Queued, "the receive loop's continuation must not be queued to the application's scheduler");
    }

    /// <summary>
    /// The application consumes the first kilobyte with <c>AdvanceTo</c> calls made through <paramref name="advanceUnder"/>
    /// (under its blocked context or scheduler); the receive loop, paused on backpressure, resumes inline in one of them
    /// and awaits its next receive from there. A byte sent after must reach Input, with nothing handed to the blocked side.
    /// </summary>
    private static async Task ReceiveAfterAnInlineAdvanceAsync(Action<Action> advanceUnder, Func<int> handedToBlocked, string because)
    {
        await using var io = new IoTestContext();
        using ReactorSocket listener = io.Listen();
        using Socket peer = IoTestContext.NewPlainSocket();
        var inputOptions = IoTestContext.PausingPast64Bytes(PipeScheduler.Inline);
        var connection = ReactorConnection.Create(await io.AcceptConnectedAsync(listener, peer), inputOptions);

        // 1 KiB pauses the receive loop's flush (over 64 bytes); the application's AdvanceTo past it resumes the loop
        // inline, on this thread, which then waits for the next receive from here.
        const int First = 1024;
        await peer.SendAsync(new byte[First]);
        int consumed = 0;
        var elapsed = Stopwatch.StartNew();
        while (consumed < First)
        {
            elapsed.Elapsed.Should().BeLessThan(Bound, "the first kilobyte arrives in Input");
            if (!connection.Input.TryRead(out ReadResult result))
            {
                Thread.Sleep(1);
                continue;
            }

            consumed += (int)result.Buffer.Length;
            advanceUnder(() => connection.Input.AdvanceTo(result.Buffer.End));
        }

        await peer.SendAsync(new byte[] { 7 });
        ReadResult next = await connection.Input.ReadAsync().AsTask().WaitAsync(Bound).ContinueWith(
            t => t.IsCompletedSuccessfully ? t.Result : default, TaskScheduler.Default);
        handedToBlocked().Should().Be(0, because);
        next.Buffer.Length.Should().Be(1, "the byte sent after the application's AdvanceTo reaches Input");
        connection.Input.AdvanceTo(next.Buffer.End);
        await connection.DisposeAsync().AsTask().WithTimeout("the connection's DisposeAsync", IoTestContext.Timeout);
    }
}
