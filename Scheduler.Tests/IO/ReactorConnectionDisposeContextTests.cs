using System.IO.Pipelines;
using System.Net.Sockets;
using Scheduler.IO;
using Scheduler.Tests.Scheduling;

namespace Scheduler.Tests.IO;

/// <summary>
/// <see cref="ReactorConnection.DisposeAsync"/> is library code called from the application's thread, which may carry a
/// single-threaded <see cref="SynchronizationContext"/> (a UI thread, a request context) that is blocked waiting for
/// the disposal. None of the disposal's own awaits may resume on that context: a continuation posted there would never
/// run, and the disposal would never end.
/// </summary>
public sealed class ReactorConnectionDisposeContextTests
{
    [Fact]
    public async Task DisposeAsync_while_lingering_never_resumes_on_the_callers_synchronization_context()
    {
        await using var io = new IoTestContext();
        using ReactorSocket listener = io.Listen();
        using Socket peer = IoTestContext.NewPlainSocket();
        peer.ReceiveBufferSize = 4 << 10; // the peer's window closes after a few KiB; the rest waits unacknowledged
        var connection = ReactorConnection.Create(await io.AcceptConnectedAsync(listener, peer));

        // The disposal below lingers, polling until its grace period ends: its linger loop awaits many times.
        await io.CompleteOutputToAPeerThatDoesNotReadAsync(connection);

        var blocked = new BlockedSynchronizationContext();
        ValueTask disposal = default;
        blocked.Run(() => disposal = connection.DisposeAsync());

        await disposal.AsTask().WithTimeout("DisposeAsync, called from a context that never runs what is posted to it", IoTestContext.Timeout);
        blocked.Posts.Should().Be(0, "the disposal's continuations must not be posted to the caller's context");
    }

    /// <summary>
    /// The receive loop, resumed inline on the application's thread by its <c>Input.Complete()</c> (the input pipe's
    /// writer scheduler is <see cref="PipeScheduler.Inline"/>), waits there for the disposal's linger verdict. That wait
    /// must not capture the application's context: the verdict comes from <c>DisposeAsync</c>, and posted to a blocked
    /// context the loop never ends, nor does the disposal, which waits for it. Kills: ReactorConnection.Loops.cs
    /// ReceiveLoopAsync, <c>_linger.Task.ConfigureAwait(false)</c> made <c>true</c>.
    /// </summary>
    [Fact]
    public async Task Receive_loop_stopped_by_Input_Complete_on_the_applications_thread_waits_for_the_linger_verdict_off_its_context()
    {
        await using var io = new IoTestContext();
        using ReactorSocket listener = io.Listen();
        using Socket peer = IoTestContext.NewPlainSocket();
        var connection = await ConnectWithAPausedReceiveLoopAsync(io, listener, peer);

        // The flush the loop waits in completes inline here: the loop stops reading and awaits the verdict from here.
        var blocked = new BlockedSynchronizationContext();
        blocked.Run(() => connection.Input.Complete());

        await connection.DisposeAsync().AsTask().WithTimeout("DisposeAsync, with the receive loop waiting for its verdict", IoTestContext.Timeout);
        blocked.Posts.Should().Be(0, "the receive loop's wait for the linger verdict must not be posted to the application's context");
    }

    /// <summary>
    /// The same loop resumed inline by <c>DisposeAsync</c> itself, called on the application's thread after the send loop
    /// has ended: the disposal cancels the loop's paused flush, the verdict (linger) is already known, and the loop
    /// drains the unread input from that thread, its receive pending until the socket closes. Neither that receive nor
    /// the loop's wait for the drain may capture the application's context. Kills: ReactorConnection.Loops.cs,
    /// <c>DiscardInputAsync().ConfigureAwait(false)</c> and its <c>Socket.ReceiveAsync(scratch).ConfigureAwait(false)</c>,
    /// each made <c>true</c>.
    /// </summary>
    [Fact]
    public async Task Receive_loop_draining_input_inline_in_DisposeAsync_on_the_applications_thread_never_posts_to_its_context()
    {
        await using var io = new IoTestContext();
        using ReactorSocket listener = io.Listen();
        using Socket peer = IoTestContext.NewPlainSocket();
        var connection = await ConnectWithAPausedReceiveLoopAsync(io, listener, peer);
        await io.Run(async () => await connection.Output.CompleteAsync());
        SpinWait.SpinUntil(() => connection.SendLoopEndedForTests, IoTestContext.Timeout).Should().BeTrue("the send loop ends after Output completes");

        var blocked = new BlockedSynchronizationContext();
        ValueTask disposal = default;
        blocked.Run(() => disposal = connection.DisposeAsync());

        await disposal.AsTask().WithTimeout("DisposeAsync, with the receive loop draining input from the caller's thread", IoTestContext.Timeout);
        blocked.Posts.Should().Be(0, "the receive loop's drain must not be posted to the application's context");
    }

    /// <summary>
    /// A connection whose receive loop waits in a flush paused by backpressure (1 KiB over a 64-byte threshold), with
    /// <see cref="PipeScheduler.Inline"/> as Input's writer scheduler, so whatever releases that flush runs the loop on
    /// its own thread.
    /// </summary>
    private static async Task<ReactorConnection> ConnectWithAPausedReceiveLoopAsync(IoTestContext io, ReactorSocket listener, Socket peer)
    {
        var inputOptions = IoTestContext.PausingPast64Bytes(PipeScheduler.Inline);
        var connection = ReactorConnection.Create(await io.AcceptConnectedAsync(listener, peer), inputOptions);
        await peer.SendAsync(new byte[1024]);
        ReadResult first = await connection.Input.ReadAsync().AsTask().WaitAsync(IoTestContext.Timeout);
        first.Buffer.Length.Should().BePositive();
        connection.Input.AdvanceTo(first.Buffer.Start); // nothing consumed: the flush stays paused

        // The flush made the data readable before the loop awaited it; released before that await, the loop would go on
        // where it is instead of on the releasing thread.
        Thread.Sleep(50);
        return connection;
    }
}
