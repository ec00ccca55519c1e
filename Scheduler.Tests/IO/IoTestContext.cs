using System.IO.Pipelines;
using System.Net;
using System.Net.Sockets;
using System.Runtime.CompilerServices;
using Scheduler.IO;
using Scheduler.Native;
using Scheduler.Tests.Scheduling;

namespace Scheduler.Tests.IO;

/// <summary>A scheduler and a reactor for one test, plus helpers for connected pairs.</summary>
internal sealed class IoTestContext : IAsyncDisposable
{
    public IoTestContext(int workers = 2, string threadNamePrefix = "io-test")
    {
        Scheduler = new WorkStealingTaskScheduler(new WorkStealingTaskSchedulerOptions { WorkerCount = workers, ThreadNamePrefix = threadNamePrefix });
        Reactor = new IoReactor(Scheduler);
    }

    public static readonly TimeSpan Timeout = TimeSpan.FromSeconds(20);

    public WorkStealingTaskScheduler Scheduler { get; }

    public IoReactor Reactor { get; }

    public static IPEndPoint Loopback => new(IPAddress.Loopback, 0);

    public ReactorSocket Listen(EndPoint? endPoint = null, int backlog = 512) => ReactorSocket.Listen(Reactor, endPoint ?? Loopback, backlog);

    /// <summary>Runs <paramref name="body"/> on the scheduler, so awaits resume on its workers.</summary>
    public Task Run(Func<Task> body, TimeSpan? timeout = null) => Scheduler.Factory.StartNew(body).Unwrap().WaitAsync(timeout ?? Timeout);

    public Task<T> Run<T>(Func<Task<T>> body, TimeSpan? timeout = null) => Scheduler.Factory.StartNew(body).Unwrap().WaitAsync(timeout ?? Timeout);

    /// <summary>
    /// Pipe options that pause a writer at <paramref name="pause"/> bytes and resume it at <paramref name="resume"/>, with
    /// both ends' continuations on this context's scheduler.
    /// </summary>
    public PipeOptions Bounded(long pause, long resume) => new(
        pauseWriterThreshold: pause,
        resumeWriterThreshold: resume,
        readerScheduler: Scheduler.PipeScheduler,
        writerScheduler: Scheduler.PipeScheduler,
        useSynchronizationContext: false);

    /// <summary>
    /// Input options whose writer (a connection's receive loop) pauses past 64 bytes and resumes under 32: a kilobyte
    /// from the peer pauses the loop's flush until the application reads.
    /// </summary>
    public static PipeOptions PausingPast64Bytes(PipeScheduler? writerScheduler = null, bool useSynchronizationContext = false) => new(
        writerScheduler: writerScheduler,
        pauseWriterThreshold: 64,
        resumeWriterThreshold: 32,
        useSynchronizationContext: useSynchronizationContext);

    /// <summary>
    /// Writes 64 KiB chunks to <paramref name="connection"/>'s Output (on the scheduler) until a flush is paused for good
    /// (see <see cref="PausedForGood"/>: the peer stopped reading and the send loop is parked on a full socket); returns
    /// that pending flush.
    /// </summary>
    public Task<Task<FlushResult>> WriteUntilPaused(ReactorConnection connection) => Run(async () =>
    {
        var chunk = new byte[64 << 10];
        for (int i = 0; i < 4096; i++)
        {
            ValueTask<FlushResult> flush = connection.Output.WriteAsync(chunk);
            if (!flush.IsCompleted)
            {
                Task<FlushResult> pending = flush.AsTask();
                if (await PausedForGood(pending, connection.Socket))
                {
                    return pending;
                }
            }
            else
            {
                await flush;
            }
        }

        throw new InvalidOperationException("the writer was never paused");
    });

    /// <summary>
    /// Whether <paramref name="flush"/>, pending on a connection over <paramref name="socket"/> whose peer reads nothing,
    /// is paused for good: it stays pending through two 300-ms windows, at the end of each of which the kernel reports the
    /// socket not writable (a parked send loop then gets no wake-up). False once it completes. Staying pending alone is
    /// no proof: a loaded run holds the send loop off its core for seconds (a CI run measured 3.45 s for a step that takes
    /// milliseconds), with room left in the socket, and the flush then completes after all, which a caller that cancels
    /// it, or expects a disposal to release it, fails on.
    /// </summary>
    public static async Task<bool> PausedForGood(Task flush, ReactorSocket socket)
    {
        int windows = 0;
        while (windows < 2)
        {
            if (await Task.WhenAny(flush, Task.Delay(300)) == flush)
            {
                return false;
            }

            windows = IsWritable(socket) ? 0 : windows + 1;
        }

        return true;
    }

    /// <summary>Whether the kernel reports <paramref name="socket"/> writable now (poll(2), POLLOUT); false once it is disposed.</summary>
    public static unsafe bool IsWritable(ReactorSocket socket)
    {
        if (!socket.TryAddRef(out ReactorSocket.FdReference fd))
        {
            return false;
        }

        using (fd)
        {
            const short PollOut = 0x4;
            Libc.PollFd entry = default;
            entry.Fd = fd.Fd;
            entry.Events = PollOut;
            return Libc.Poll(&entry, 1, 0) == 1 && (entry.ReturnedEvents & PollOut) != 0;
        }
    }

    /// <summary>
    /// Starts a connect to <paramref name="endPoint"/> on the scheduler and tells whether it is pending when its call
    /// returns. A Unix domain connect with backlog room completes within its call, so a pending one waits for room: no
    /// window of real time needs to stand for that, which a connect with room, started late on a loaded machine, could
    /// outlast. A connect that fails at its call throws here.
    /// </summary>
    public Task<(bool Pending, Task<ReactorSocket> Connect)> StartConnect(EndPoint endPoint, CancellationToken cancellationToken = default) =>
        Run(() =>
        {
            ValueTask<ReactorSocket> started = ReactorSocket.ConnectAsync(Reactor, endPoint, cancellationToken);
            return Task.FromResult((!started.IsCompleted, started.AsTask()));
        });

    /// <summary>
    /// Fills a listener's backlog (Linux queues backlog + 1 connections) with connects to <paramref name="endPoint"/>
    /// until one is still pending when its call returns, and returns that one (null after eight that all completed).
    /// Those that completed go into <paramref name="connected"/>, for the caller to dispose. A connect with room
    /// completes within its call (Unix domain) or by the time it returns (TCP over loopback), so the call's own result
    /// tells which one waits, where a fixed window of real time could be outlasted by a loaded run.
    /// </summary>
    public async Task<Task<ReactorSocket>?> ConnectUntilOneWaitsAsync(EndPoint endPoint, List<ReactorSocket> connected)
    {
        for (int i = 0; i < 8; i++)
        {
            (bool pending, Task<ReactorSocket> connect) = await StartConnect(endPoint);
            if (pending)
            {
                return connect;
            }

            connected.Add(await connect); // a connect that failed at its call threw in StartConnect
        }

        return null;
    }

    /// <summary>Reads <paramref name="connection"/>'s Input (on the scheduler) to its end; throws what the end reports.</summary>
    public Task ReadInputToEnd(ReactorConnection connection) => Run(async () =>
    {
        while (true)
        {
            ReadResult result = await connection.Input.ReadAsync();
            connection.Input.AdvanceTo(result.Buffer.End);
            if (result.IsCompleted)
            {
                return;
            }
        }
    });

    /// <summary>A connected (client, server) pair of reactor sockets.</summary>
    public async Task<(ReactorSocket Client, ReactorSocket Server)> ConnectPairAsync(ReactorSocket listener)
    {
        ValueTask<ReactorSocket> accept = listener.AcceptAsync();
        ReactorSocket client = await ReactorSocket.ConnectAsync(Reactor, listener.LocalEndPoint!);
        ReactorSocket server = await accept;
        return (client, server);
    }

    /// <summary>Runs <paramref name="body"/> on the scheduler with a fresh connected (client, server) pair, disposed afterwards.</summary>
    public Task RunOnPair(ReactorSocket listener, Func<ReactorSocket, ReactorSocket, Task> body, TimeSpan? timeout = null) =>
        Run(async () =>
        {
            (ReactorSocket client, ReactorSocket server) = await ConnectPairAsync(listener);
            using (client)
            using (server)
            {
                await body(client, server);
            }
        }, timeout);

    /// <summary><see cref="ConnectPairAsync"/> run on the scheduler, for tests that are not already on it.</summary>
    public Task<(ReactorSocket Client, ReactorSocket Server)> ConnectPairOnSchedulerAsync(ReactorSocket listener) =>
        Run(() => ConnectPairAsync(listener));

    /// <summary>
    /// A connection over a fresh listener (closed once the pair is connected): our side as a <see cref="ReactorConnection"/>,
    /// accepted on the scheduler, and the client socket. The caller disposes both.
    /// </summary>
    public async Task<(ReactorConnection Connection, ReactorSocket Client)> ConnectionPairAsync()
    {
        using ReactorSocket listener = Listen();
        (ReactorSocket client, ReactorSocket server) = await ConnectPairOnSchedulerAsync(listener);
        return (ReactorConnection.Create(server), client);
    }

    /// <summary>A plain System.Net.Sockets TCP/IPv4 socket, for interop with ours.</summary>
    public static Socket NewPlainSocket() => new(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);

    /// <summary>Connects <paramref name="plain"/> to <paramref name="listener"/>; returns our side, accepted on the scheduler.</summary>
    public async Task<ReactorSocket> AcceptConnectedAsync(ReactorSocket listener, Socket plain)
    {
        Task<ReactorSocket> accept = Run(async () => await listener.AcceptAsync());
        await plain.ConnectAsync(listener.LocalEndPoint!).WithTimeout("The plain socket's connect", IoTestContext.Timeout);
        return await accept;
    }

    /// <summary>Accepts a connection from a plain peer that then resets it (closed with a zero linger: RST); returns our side.</summary>
    public async Task<ReactorSocket> AcceptConnectionResetByPeerAsync(ReactorSocket listener)
    {
        using Socket peer = NewPlainSocket();
        ReactorSocket ours = await AcceptConnectedAsync(listener, peer);
        peer.LingerState = new LingerOption(true, 0);
        peer.Close();
        return ours;
    }

    /// <summary>
    /// Leaves <paramref name="connection"/> where a disposal lingers: the application answered 12 KiB and completed
    /// Output itself (as a server does at the end of a request); the reply fits the kernel's buffers, so the send loop
    /// handed all of it over, shut the send side down and ended, but the peer never reads, so part of the reply stays
    /// unacknowledged and a <c>DisposeAsync</c> now polls for the peer's acknowledgement until its grace period ends.
    /// The caller makes the peer's receive buffer 4 KiB before it connects, so that its window closes within the reply.
    /// </summary>
    public async Task CompleteOutputToAPeerThatDoesNotReadAsync(ReactorConnection connection)
    {
        await Run(async () =>
        {
            await connection.Output.WriteAsync(new byte[12 << 10]);
            await connection.Output.CompleteAsync();
        });
        SpinWait.SpinUntil(() => connection.SendLoopEndedForTests, Timeout).Should().BeTrue("the send loop ends after Output completes");
        connection.Socket.UnacknowledgedSendBytes().Should().BePositive("the peer never reads, so DisposeAsync lingers");
    }

    /// <summary>Sends one byte from <paramref name="from"/> and checks that <paramref name="to"/> receives exactly it: both directions' operations are free.</summary>
    public static async Task AssertByteCrossesAsync(ReactorSocket from, ReactorSocket to, byte value)
    {
        (await from.SendAsync(new[] { value })).Should().Be(1);
        var one = new byte[1];
        await ReceiveExactlyAsync(to, one);
        one[0].Should().Be(value);
    }

    public static Task ReceiveExactlyAsync(ReactorSocket socket, Memory<byte> buffer) =>
        ReceiveExactlyAsync(buffer, b => socket.ReceiveAsync(b));

    public static Task ReceiveExactlyAsync(Socket socket, Memory<byte> buffer) =>
        ReceiveExactlyAsync(buffer, b => socket.ReceiveAsync(b));

    private static async Task ReceiveExactlyAsync(Memory<byte> buffer, Func<Memory<byte>, ValueTask<int>> receive)
    {
        int total = 0;
        while (total < buffer.Length)
        {
            int n = await receive(buffer[total..]);
            if (n == 0)
            {
                throw new EndOfStreamException($"Peer closed after {total} of {buffer.Length} bytes.");
            }

            total += n;
        }
    }

    public static byte[] Pattern(int length, int seed)
    {
        var bytes = new byte[length];
        new Random(seed).NextBytes(bytes);
        return bytes;
    }

    /// <summary><see cref="SchedulerTestHelpers.DisposeWithin"/> with this context's bound.</summary>
    public static SchedulerTestHelpers.BoundedDisposal DisposeWithin(
        IAsyncDisposable disposable, [CallerArgumentExpression(nameof(disposable))] string what = "") =>
        SchedulerTestHelpers.DisposeWithin(disposable, what, Timeout);

    /// <summary>
    /// Bounded, like every wait here: a reactor thread or a worker that never finishes (a task of the test still blocked
    /// or spinning on it after a failed assertion) fails the test instead of hanging the run.
    /// </summary>
    public async ValueTask DisposeAsync()
    {
        await Task.Factory.StartNew(Reactor.Dispose, CancellationToken.None, TaskCreationOptions.LongRunning, TaskScheduler.Default)
            .WithTimeout("IoReactor.Dispose (joining the reactor thread)", Timeout);
        await Scheduler.DisposeAsync().AsTask().WithTimeout("The scheduler's DisposeAsync (a task still running or blocked on a worker)", Timeout);
    }
}
