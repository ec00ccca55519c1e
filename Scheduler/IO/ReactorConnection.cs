using System.IO.Pipelines;

namespace Scheduler.IO;

/// <summary>
/// A connected <see cref="ReactorSocket"/> exposed as an <see cref="IDuplexPipe"/>: a receive loop fills
/// <see cref="Input"/> and a send loop drains <see cref="Output"/> with gathered writes.
/// </summary>
/// <remarks>
/// <para>Backpressure is end to end: the receive loop stops reading the socket while <see cref="Input"/> holds more
/// than its <see cref="PipeOptions.PauseWriterThreshold"/> (the kernel then closes the TCP window), and
/// <c>Output.FlushAsync</c> waits while the peer does not drain what was written.</para>
/// <para>Completing <see cref="Output"/> sends what is buffered and then shuts down the send side (the peer reads
/// end of stream). The peer's shutdown completes <see cref="Input"/>; a reset completes it with the
/// <see cref="System.Net.Sockets.SocketException"/>. Completing <see cref="Output"/> with an exception (at once, also while a
/// send waits for a peer that stopped reading), or a send that fails, aborts the connection: <see cref="Input"/> then
/// ends with that exception, never as an orderly end — except a send's EPIPE after the peer had already ended its
/// stream (a reset that followed its end of stream), where <see cref="Input"/> ends as that stream did. Without explicit options both pipes use the reactor's
/// scheduler (<see cref="WorkStealingTaskScheduler.PipeScheduler"/>) and its default thresholds (64 KiB/32 KiB).</para>
/// <para>A <see cref="PipeScheduler"/> of the options whose <c>Schedule</c> throws loses no continuation: that one runs on
/// the ThreadPool, and the connection aborts with an <see cref="InvalidOperationException"/> wrapping the scheduler's
/// exception, which <see cref="Input"/> reports.</para>
/// </remarks>
public sealed partial class ReactorConnection : IDuplexPipe, IAsyncDisposable
{
    private readonly Pipe _input;
    private readonly Pipe _output;
    private readonly AbortingWriter _outputWriter;
    private readonly Task _receiveLoop;
    private readonly Task _sendLoop;

    // Set by DisposeAsync: true when the output went out and the send side is shut down, so the receive loop reads
    // and drops the rest of the input until the socket closes (see DisposeAsync); false to just end.
    private readonly TaskCompletionSource<bool> _linger = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private bool _outputShutDown;

    // What ended the send side before Output's orderly end: the exception the application completed Output with, or
    // the send's error. Written before the send loop shuts the socket down, so the receive loop, which then reads 0,
    // ends Input with it: that 0 is our own shutdown cutting the peer's stream, not the peer's end of it.
    private Exception? _sendFailure;
    private int _disposed;

    private ReactorConnection(ReactorSocket socket, PipeOptions inputOptions, PipeOptions outputOptions)
    {
        Socket = socket;
        _input = new Pipe(GuardSchedulers(inputOptions));
        _output = new Pipe(GuardSchedulers(outputOptions));
        _outputWriter = new AbortingWriter(this, _output.Writer);
        var receive = new Task<Task>(static s => ((ReactorConnection)s!).ReceiveLoopAsync(), this, TaskCreationOptions.DenyChildAttach);
        var send = new Task<Task>(static s => ((ReactorConnection)s!).SendLoopAsync(), this, TaskCreationOptions.DenyChildAttach);
        _receiveLoop = receive.Unwrap();
        _sendLoop = send.Unwrap();

        // One work item queued from here starts both loops from a worker, where queueing cannot fail. A disposed
        // scheduler refuses that one item and nothing runs (Create throws, the socket untouched); two separate
        // StartNew calls could leave the first loop running on a socket nobody owns when the second was refused.
        // No creation options: a disposed scheduler still accepts a task with exactly DenyChildAttach (the shape of the
        // runtime's value-task resumptions, see WorkStealingTaskScheduler.IsAwaitResumption), and this one must be
        // refused (AdversarialLifecycleTests). Nothing attaches to it either way: the loops deny attaching themselves.
        Task.Factory.StartNew(
            static s =>
            {
                (Task<Task> receive, Task<Task> send, TaskScheduler scheduler) = ((Task<Task>, Task<Task>, TaskScheduler))s!;
                receive.Start(scheduler);
                send.Start(scheduler);
            },
            (receive, send, (TaskScheduler)socket.Reactor.Scheduler),
            CancellationToken.None,
            TaskCreationOptions.None,
            socket.Reactor.Scheduler);
    }

    /// <summary>
    /// How long <see cref="DisposeAsync"/> lets already-written output drain, and the peer acknowledge it, before it
    /// closes the socket anyway.
    /// </summary>
    internal static TimeSpan DisposeGracePeriod { get; set; } = TimeSpan.FromSeconds(1);

    /// <summary>How often a lingering <see cref="DisposeAsync"/> asks the kernel whether the peer acknowledged everything.</summary>
    private static TimeSpan LingerPollInterval => TimeSpan.FromMilliseconds(5);

    /// <summary>The send loop has ended (after the application completed <see cref="Output"/>): tests wait for it.</summary>
    internal bool SendLoopEndedForTests => _sendLoop.IsCompleted;

    /// <summary>The underlying socket; the connection owns it and disposes it in <see cref="DisposeAsync"/>.</summary>
    public ReactorSocket Socket { get; }

    /// <summary>
    /// Bytes received from the peer. Completes at the peer's orderly shutdown, or with the error that ended the
    /// connection (a receive's, a send's, or the exception <see cref="Output"/> was completed with).
    /// </summary>
    public PipeReader Input => _input.Reader;

    /// <summary>Bytes to send to the peer. Complete it to send what is buffered and then shut down the send side.</summary>
    public PipeWriter Output => _outputWriter;

    /// <summary>Starts the receive and send loops of a connected socket.</summary>
    /// <param name="socket">A connected (not listening, not disposed) socket; the connection takes ownership.</param>
    /// <param name="inputOptions">Options of the <see cref="Input"/> pipe; null for the reactor scheduler's defaults.</param>
    /// <param name="outputOptions">Options of the <see cref="Output"/> pipe; null for the reactor scheduler's defaults.</param>
    /// <exception cref="ArgumentNullException"><paramref name="socket"/> is null.</exception>
    /// <exception cref="ArgumentException"><paramref name="socket"/> is a listening socket.</exception>
    /// <exception cref="ArgumentOutOfRangeException">Options with a minimum segment size of 0 (a pipe's writes would never return).</exception>
    /// <exception cref="ObjectDisposedException"><paramref name="socket"/> is disposed.</exception>
    /// <exception cref="TaskSchedulerException">
    /// The reactor's scheduler is disposed (the inner exception is <see cref="ObjectDisposedException"/>): nothing was
    /// started and the socket is left as it was, still the caller's to use or dispose.
    /// </exception>
    public static ReactorConnection Create(ReactorSocket socket, PipeOptions? inputOptions = null, PipeOptions? outputOptions = null)
    {
        ArgumentNullException.ThrowIfNull(socket);
        if (socket.IsListener)
        {
            throw new ArgumentException("A listening socket cannot carry a connection; pass a socket from AcceptAsync or ConnectAsync.", nameof(socket));
        }

        ObjectDisposedException.ThrowIf(socket.IsDisposed, socket);
        ThrowIfZeroSegmentSize(inputOptions, nameof(inputOptions));
        ThrowIfZeroSegmentSize(outputOptions, nameof(outputOptions));
        PipeOptions defaults = socket.Reactor.DefaultPipeOptions;
        return new ReactorConnection(socket, inputOptions ?? defaults, outputOptions ?? defaults);
    }

    /// <summary>
    /// <see cref="PipeOptions"/> accepts a minimum segment size of 0, and then a pipe's writer loops forever in
    /// <c>WriteAsync</c> (System.IO.Pipelines in .NET 10: a 100 KB write to a plain <c>Pipe</c> never returns). Refused here
    /// with the option's name rather than hanging the application's first write.
    /// </summary>
    private static void ThrowIfZeroSegmentSize(PipeOptions? options, string parameterName)
    {
        if (options is { MinimumSegmentSize: 0 })
        {
            throw new ArgumentOutOfRangeException(parameterName, "PipeOptions.MinimumSegmentSize must be positive (or -1 for the default): with 0 a pipe's WriteAsync never returns.");
        }
    }

    /// <summary>
    /// Completes <see cref="Output"/>, lets buffered bytes drain and the peer acknowledge them (reading and dropping
    /// any input meanwhile), closes the socket, and waits for both loops to finish. All of that takes at most about a
    /// second, so a peer that stopped reading cannot hang this. Idempotent.
    /// </summary>
    /// <remarks>
    /// A writer racing this on another thread is never pulled from under: while it holds memory from
    /// <c>GetMemory</c>/<c>GetSpan</c> (until its <c>Advance</c>), <see cref="Output"/> is not completed from here; what
    /// was flushed is sent, the held memory stays valid, and completing <see cref="Output"/> later gives it back to
    /// the pool. After this call <see cref="Output"/>'s <c>GetMemory</c>, <c>GetSpan</c>, <c>WriteAsync</c> and
    /// <c>FlushAsync</c> throw <see cref="ObjectDisposedException"/>; a flush already waiting returns
    /// <see cref="FlushResult.IsCompleted"/>. <see cref="Socket"/> (disposed), <see cref="Input"/> and
    /// <see cref="Output"/> stay readable, and a read of <see cref="Input"/> ends (it never waits for data that cannot come).
    /// </remarks>
    public async ValueTask DisposeAsync()
    {
        // No await here resumes on the caller's context (ConfigureAwait(false), or options without
        // ContinueOnCapturedContext): this runs on the application's thread, and a caller that blocks on a
        // single-threaded context until the disposal ends (sync over async) would otherwise wait forever.
        if (Interlocked.Exchange(ref _disposed, 1) == 0)
        {
            // The grace period is this source's timer, and the linger polls wait on its token: cancelling it once we are
            // done releases every timer at once. Delays of their own would each keep a timer until it fired: on a server
            // that churns connections, one live timer per closed connection for up to a second.
            var grace = new CancellationTokenSource(DisposeGracePeriod);
            try
            {
                // The send loop ends after what the application has written, then shuts the send side down. Completing
                // Output commits what was advanced but not flushed, but only while no writer holds a block from
                // GetMemory: completing the pipe under one (a writer on another thread) gave that block back to the
                // pool, shared with every other connection, while the writer still filled it. Then the send loop ends
                // after what was flushed, told by a cancelled read, and the held block stays the writer's.
                if (_outputWriter.TryClaimForDispose())
                {
                    await _output.Writer.CompleteAsync().ConfigureAwait(false);
                }

                _output.Reader.CancelPendingRead();
                await _sendLoop.WaitAsync(grace.Token).ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing);
                bool lingering = _sendLoop.IsCompleted && _outputShutDown;
                _linger.TrySetResult(lingering);
                if (lingering)
                {
                    // Everything is in the kernel, our FIN behind it. Closing now with unread input would make Linux
                    // reset the connection and drop what the peer has not acknowledged yet (a long reply to a peer that
                    // reads slowly, whose request we did not read to the end). So the receive loop drops the input
                    // (one held by backpressure is let go), until the peer's end of stream, until the peer acknowledged
                    // everything (nothing of ours can be lost then), or until the grace period ends.
                    _input.Writer.CancelPendingFlush();
                    while (!_receiveLoop.IsCompleted && !grace.IsCancellationRequested && Socket.UnacknowledgedSendBytes() > 0)
                    {
                        await Task.WhenAny(_receiveLoop, Task.Delay(LingerPollInterval, grace.Token)).ConfigureAwait(false);
                    }
                }
            }
            finally
            {
                grace.Cancel();
                grace.Dispose();
                _linger.TrySetResult(false); // a receive loop waiting for the verdict must not wait forever
                Socket.Dispose();
                _output.Reader.CancelPendingRead();
                _input.Writer.CancelPendingFlush();
            }
        }

        await _receiveLoop.ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing);
        await _sendLoop.ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing);
    }

    private bool IsDisposing => Volatile.Read(ref _disposed) != 0;
}
