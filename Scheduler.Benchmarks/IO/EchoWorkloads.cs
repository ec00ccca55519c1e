using System.Buffers;
using System.Diagnostics;
using System.IO.Pipelines;
using System.Net;
using System.Net.Sockets;
using HdrHistogram;
using Pipelines.Sockets.Unofficial;
using Scheduler.IO;

namespace Scheduler.Benchmarks.IO;

/// <summary>The three socket stacks the echo workload compares.</summary>
public enum EchoTransport
{
    /// <summary>Ours: <see cref="IoReactor"/> + <see cref="ReactorSocket"/>, continuations on a <see cref="WorkStealingTaskScheduler"/>.</summary>
    Reactor,

    /// <summary><see cref="ReactorConnection"/> pipes on the reactor (the server side uses pipes, clients raw reactor sockets).</summary>
    ReactorPipes,

    /// <summary><see cref="System.Net.Sockets.Socket"/> async methods, continuations on the .NET ThreadPool.</summary>
    Sockets,

    /// <summary>Pipelines.Sockets.Unofficial 2.2.16 <see cref="SocketConnection"/> on both ends.</summary>
    PipelinesSocketsUnofficial,
}

/// <summary>Whether, and with which timers, the echo servers arm a timeout around every receive (the timeout pattern).</summary>
public enum EchoTimeouts
{
    /// <summary>No timeout.</summary>
    None,

    /// <summary>
    /// System.Net.Sockets servers: one <see cref="CancellationTokenSource"/> per connection, <c>CancelAfter(30 s)</c>
    /// before each receive and <c>TryReset()</c> after it (the BCL timer queue).
    /// </summary>
    System,

    /// <summary>Reactor servers: the same pattern on a source created with <see cref="IoReactor.Timers"/> (driven by the reactor's thread).</summary>
    ReactorWheel,

    /// <summary>Reactor servers: the same pattern on a <see cref="Scheduler.Timers.TimerWheel"/> with its own driver thread.</summary>
    DedicatedWheel,
}

/// <summary>Result of one echo run: throughput, round-trip latency and allocation per echoed message.</summary>
internal sealed record EchoResult(
    EchoTransport Stack,
    int Connections,
    int MessageSize,
    long Messages,
    double MessagesPerSecond,
    double P50Microseconds,
    double P99Microseconds,
    double AllocatedBytesPerMessage);

/// <summary>
/// Loopback echo: N client connections each send a message, wait for the whole echo, record the round trip, repeat.
/// Client and server live in this process on the same stack. Reusable by the <c>compare</c> command
/// (<c>RunAsync(EchoTransport.Reactor, 256, 64, ...)</c> vs <see cref="EchoTransport.Sockets"/>).
/// </summary>
internal static class EchoWorkloads
{
    /// <summary>Runs one configuration: <paramref name="warmup"/> unmeasured, then <paramref name="duration"/> measured.</summary>
    /// <param name="spreadOverCpus">For the reactor stacks: whether the scheduler keeps its workers on their own CPUs (on by default; off shows what it buys).</param>
    public static async Task<EchoResult> RunAsync(EchoTransport stack, int connections, int messageSize, TimeSpan duration, TimeSpan? warmup = null, EchoTimeouts timeouts = EchoTimeouts.None, bool spreadOverCpus = true)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(connections, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(messageSize, 1);
        await using IEchoHarness harness = CreateHarness(stack, timeouts, spreadOverCpus);

        var control = new RunControl();
        var echoLoops = new EchoLoop[connections];
        var loops = new Task[connections];
        var message = new byte[messageSize];
        new Random(42).NextBytes(message);
        for (int i = 0; i < connections; i++)
        {
            IEchoClient client = await harness.ConnectAsync();
            var loop = echoLoops[i] = new EchoLoop(-1, control);
            loops[i] = harness.RunClientLoop(async () =>
            {
                try
                {
                    await client.LoopAsync(message, loop);
                }
                finally
                {
                    await client.DisposeAsync();
                }
            });
        }

        await Task.Delay(warmup ?? TimeSpan.FromMilliseconds(Math.Min(1000, duration.TotalMilliseconds / 4)));
        long allocatedBefore = GC.GetTotalAllocatedBytes(precise: true);
        long started = Stopwatch.GetTimestamp();
        Volatile.Write(ref control.Measuring, true);
        await Task.Delay(duration);
        Volatile.Write(ref control.Measuring, false);
        double seconds = Stopwatch.GetElapsedTime(started).TotalSeconds;
        long allocatedAfter = GC.GetTotalAllocatedBytes(precise: true);
        control.Stop.Cancel();
        await Task.WhenAll(loops).WaitAsync(TimeSpan.FromSeconds(30));

        var all = new LongHistogram(Stopwatch.Frequency * 10, 3);
        foreach (EchoLoop loop in echoLoops)
        {
            all.Add(loop.Histogram);
        }

        long messages = echoLoops.Sum(l => l.Count);
        double toMicros = 1_000_000.0 / Stopwatch.Frequency;
        return new EchoResult(
            stack,
            connections,
            messageSize,
            messages,
            messages / seconds,
            messages == 0 ? 0 : all.GetValueAtPercentile(50) * toMicros,
            messages == 0 ? 0 : all.GetValueAtPercentile(99) * toMicros,
            messages == 0 ? 0 : (double)(allocatedAfter - allocatedBefore) / messages);
    }

    /// <summary>Opens <paramref name="connections"/> echo connections on <paramref name="stack"/> for repeated fixed-count runs (BenchmarkDotNet).</summary>
    public static async Task<EchoSession> OpenAsync(EchoTransport stack, int connections, int messageSize)
    {
        IEchoHarness harness = CreateHarness(stack);
        var clients = new IEchoClient[connections];
        for (int i = 0; i < connections; i++)
        {
            clients[i] = await harness.ConnectAsync();
        }

        var message = new byte[messageSize];
        new Random(42).NextBytes(message);
        return new EchoSession(harness, clients, message);
    }

    /// <summary>Open connections of one stack; <see cref="RoundTripsAsync"/> runs a fixed number of echoes on each.</summary>
    internal sealed class EchoSession : IAsyncDisposable
    {
        private readonly IEchoHarness _harness;
        private readonly IEchoClient[] _clients;
        private readonly byte[] _message;
        private readonly Task[] _loops;

        internal EchoSession(IEchoHarness harness, IEchoClient[] clients, byte[] message)
        {
            _harness = harness;
            _clients = clients;
            _message = message;
            _loops = new Task[clients.Length];
        }

        public Task RoundTripsAsync(int perConnection)
        {
            for (int i = 0; i < _clients.Length; i++)
            {
                IEchoClient client = _clients[i];
                var loop = new EchoLoop(perConnection, null);
                _loops[i] = _harness.RunClientLoop(() => client.LoopAsync(_message, loop));
            }

            return Task.WhenAll(_loops);
        }

        public async ValueTask DisposeAsync()
        {
            foreach (IEchoClient client in _clients)
            {
                await client.DisposeAsync();
            }

            await _harness.DisposeAsync();
        }
    }

    /// <summary>The timeout the servers arm around each receive when asked to (never reached: the pattern's cost is the point).</summary>
    internal static readonly TimeSpan ReceiveTimeout = TimeSpan.FromSeconds(30);

    private static IEchoHarness CreateHarness(EchoTransport stack, EchoTimeouts timeouts = EchoTimeouts.None, bool spreadOverCpus = true) => (stack, timeouts) switch
    {
        (EchoTransport.Reactor, EchoTimeouts.None or EchoTimeouts.ReactorWheel or EchoTimeouts.DedicatedWheel) => new ReactorHarness(usePipes: false, timeouts, spreadOverCpus),
        (EchoTransport.ReactorPipes, EchoTimeouts.None) => new ReactorHarness(usePipes: true, timeouts, spreadOverCpus),
        (EchoTransport.Sockets, EchoTimeouts.None or EchoTimeouts.System) => new SocketsHarness(timeouts == EchoTimeouts.System),
        (EchoTransport.PipelinesSocketsUnofficial, EchoTimeouts.None) => new PsuHarness(),
        _ => throw new ArgumentException($"Echo over {stack} cannot use {timeouts} timeouts.", nameof(timeouts)),
    };

    internal sealed class RunControl
    {
        public readonly CancellationTokenSource Stop = new();
        public bool Measuring;
    }

    /// <summary>Per-connection loop state: a fixed count, or until stopped while recording round trips.</summary>
    internal sealed class EchoLoop(int count, RunControl? control)
    {
        private static readonly LongHistogram s_unused = new(2, 1);

        private int _remaining = count;

        // Only timed runs record latency; fixed-count (BenchmarkDotNet) runs must not allocate a histogram per invocation.
        public LongHistogram Histogram { get; } = control is null ? s_unused : new(Stopwatch.Frequency * 10, 3);

        public long Count { get; private set; }

        public bool Continue() => control is null ? _remaining-- > 0 : !control.Stop.IsCancellationRequested;

        public void Record(long start)
        {
            if (control is not null && Volatile.Read(ref control.Measuring))
            {
                Histogram.RecordValue(Stopwatch.GetTimestamp() - start);
                Count++;
            }
        }
    }

    internal interface IEchoClient : IAsyncDisposable
    {
        Task LoopAsync(byte[] message, EchoLoop loop);
    }

    internal interface IEchoHarness : IAsyncDisposable
    {
        Task<IEchoClient> ConnectAsync();

        Task RunClientLoop(Func<Task> loop);
    }

    private sealed class ReactorHarness : IEchoHarness
    {
        private readonly WorkStealingTaskScheduler _scheduler;
        private readonly IoReactor _reactor;
        private readonly ReactorSocket _listener;
        private readonly Task _acceptLoop;
        private readonly bool _usePipes;
        private readonly List<Task> _servers = [];
        private readonly Scheduler.Timers.TimerWheel? _ownWheel;
        private readonly TimeProvider? _timeouts;

        public ReactorHarness(bool usePipes, EchoTimeouts timeouts = EchoTimeouts.None, bool spreadOverCpus = true)
        {
            _scheduler = new(new WorkStealingTaskSchedulerOptions { ThreadNamePrefix = "echo-bench", SpreadOverCpus = spreadOverCpus });
            _usePipes = usePipes;
            _reactor = new IoReactor(_scheduler);
            _ownWheel = timeouts == EchoTimeouts.DedicatedWheel ? new Scheduler.Timers.TimerWheel() : null;
            _timeouts = timeouts == EchoTimeouts.ReactorWheel ? _reactor.Timers : _ownWheel;
            _listener = ReactorSocket.Listen(_reactor, new IPEndPoint(IPAddress.Loopback, 0), 1024);
            _acceptLoop = _scheduler.Factory.StartNew(AcceptLoopAsync).Unwrap();
        }

        public async Task<IEchoClient> ConnectAsync() =>
            new Client(await _scheduler.Factory.StartNew(async () => await ReactorSocket.ConnectAsync(_reactor, _listener.LocalEndPoint!)).Unwrap());

        public Task RunClientLoop(Func<Task> loop) => _scheduler.Factory.StartNew(loop).Unwrap();

        public async ValueTask DisposeAsync()
        {
            _listener.Dispose();
            await _acceptLoop;
            await Task.WhenAll(_servers).WaitAsync(TimeSpan.FromSeconds(10));
            _reactor.Dispose();
            _ownWheel?.Dispose();
            await _scheduler.DisposeAsync();
        }

        private async Task AcceptLoopAsync()
        {
            while (true)
            {
                ReactorSocket socket;
                try
                {
                    socket = await _listener.AcceptAsync();
                }
                catch (ObjectDisposedException)
                {
                    return;
                }

                _servers.Add(_usePipes ? ServePipesAsync(ReactorConnection.Create(socket)) : ServeAsync(socket, _timeouts));
            }
        }

        private static async Task ServeAsync(ReactorSocket socket, TimeProvider? timeouts)
        {
            using (socket)
            {
                var buffer = new byte[64 * 1024];

                // A source made with a TimeProvider other than the system one cannot TryReset (the BCL refuses), so
                // the pattern disarms with CancelAfter(infinite): one ITimer.Change, as TryReset is on the system one.
                using CancellationTokenSource? timeout = timeouts is null ? null : new CancellationTokenSource(Timeout.InfiniteTimeSpan, timeouts);
                CancellationToken token = timeout?.Token ?? CancellationToken.None;
                try
                {
                    while (true)
                    {
                        timeout?.CancelAfter(ReceiveTimeout);
                        int n = await socket.ReceiveAsync(buffer, token);
                        timeout?.CancelAfter(Timeout.InfiniteTimeSpan);
                        if (n == 0)
                        {
                            return;
                        }

                        await socket.SendAsync(buffer.AsMemory(0, n));
                    }
                }
                catch (SocketException)
                {
                }
            }
        }

        private static async Task ServePipesAsync(ReactorConnection connection)
        {
            await using (connection)
            {
                await PipeEchoAsync(connection.Input, connection.Output);
            }
        }

        private sealed class Client(ReactorSocket socket) : IEchoClient
        {
            // One long-lived async method per connection: the harness adds no allocation per message.
            public async Task LoopAsync(byte[] message, EchoLoop loop)
            {
                Memory<byte> receive = new byte[message.Length];
                while (loop.Continue())
                {
                    long start = Stopwatch.GetTimestamp();
                    await socket.SendAsync(message);
                    int total = 0;
                    while (total < receive.Length)
                    {
                        int n = await socket.ReceiveAsync(receive[total..]);
                        if (n == 0)
                        {
                            throw new EndOfStreamException();
                        }

                        total += n;
                    }
                    loop.Record(start);
                }
            }

            public ValueTask DisposeAsync()
            {
                socket.Shutdown(SocketShutdown.Send);
                socket.Dispose();
                return ValueTask.CompletedTask;
            }
        }
    }

    /// <summary>
    /// A loopback <see cref="Socket"/> listener with its accept loop, shared by the harnesses built on
    /// System.Net.Sockets: each only says how it connects a client and serves an accepted socket.
    /// </summary>
    private abstract class SocketListenerHarness : IEchoHarness
    {
        private readonly Socket _listener;
        private readonly Task _acceptLoop;
        private readonly List<Task> _servers = [];

        protected SocketListenerHarness()
        {
            _listener = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
            _listener.Bind(new IPEndPoint(IPAddress.Loopback, 0));
            _listener.Listen(1024);
            _acceptLoop = Task.Run(AcceptLoopAsync);
        }

        protected EndPoint ListenerEndPoint => _listener.LocalEndPoint!;

        public abstract Task<IEchoClient> ConnectAsync();

        public Task RunClientLoop(Func<Task> loop) => Task.Run(loop);

        public async ValueTask DisposeAsync()
        {
            _listener.Dispose();
            await _acceptLoop;
            await Task.WhenAll(_servers).WaitAsync(TimeSpan.FromSeconds(10));
        }

        /// <summary>Starts serving one accepted connection; the returned task is awaited on dispose.</summary>
        protected abstract Task StartServer(Socket socket);

        private async Task AcceptLoopAsync()
        {
            while (true)
            {
                Socket socket;
                try
                {
                    socket = await _listener.AcceptAsync();
                }
                catch (Exception e) when (e is ObjectDisposedException or SocketException)
                {
                    return;
                }

                _servers.Add(StartServer(socket));
            }
        }
    }

    private sealed class SocketsHarness(bool timeouts) : SocketListenerHarness
    {
        public override async Task<IEchoClient> ConnectAsync()
        {
            var socket = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
            await socket.ConnectAsync(ListenerEndPoint);
            return new Client(socket);
        }

        protected override Task StartServer(Socket socket)
        {
            socket.NoDelay = true;
            return Task.Run(() => ServeAsync(socket, timeouts));
        }

        private static async Task ServeAsync(Socket socket, bool timeouts)
        {
            using (socket)
            {
                var buffer = new byte[64 * 1024];
                using CancellationTokenSource? timeout = timeouts ? new CancellationTokenSource() : null;
                CancellationToken token = timeout?.Token ?? CancellationToken.None;
                try
                {
                    while (true)
                    {
                        timeout?.CancelAfter(ReceiveTimeout);
                        int n = await socket.ReceiveAsync(buffer, SocketFlags.None, token);
                        timeout?.TryReset();
                        if (n == 0)
                        {
                            return;
                        }

                        int sent = 0;
                        while (sent < n)
                        {
                            sent += await socket.SendAsync(buffer.AsMemory(sent, n - sent), SocketFlags.None);
                        }
                    }
                }
                catch (SocketException)
                {
                }
            }
        }

        private sealed class Client(Socket socket) : IEchoClient
        {
            // One long-lived async method per connection: the harness adds no allocation per message.
            public async Task LoopAsync(byte[] message, EchoLoop loop)
            {
                Memory<byte> receive = new byte[message.Length];
                while (loop.Continue())
                {
                    long start = Stopwatch.GetTimestamp();
                    int sent = 0;
                    while (sent < message.Length)
                    {
                        sent += await socket.SendAsync(message[sent..], SocketFlags.None);
                    }

                    int total = 0;
                    while (total < receive.Length)
                    {
                        int n = await socket.ReceiveAsync(receive[total..], SocketFlags.None);
                        if (n == 0)
                        {
                            throw new EndOfStreamException();
                        }

                        total += n;
                    }
                    loop.Record(start);
                }
            }

            public ValueTask DisposeAsync()
            {
                socket.Shutdown(SocketShutdown.Send);
                socket.Dispose();
                return ValueTask.CompletedTask;
            }
        }
    }

    private sealed class PsuHarness : SocketListenerHarness
    {
        public override async Task<IEchoClient> ConnectAsync() =>
            new Client(await SocketConnection.ConnectAsync(ListenerEndPoint));

        protected override Task StartServer(Socket socket)
        {
            SocketConnection.SetRecommendedServerOptions(socket);
            SocketConnection connection = SocketConnection.Create(socket);
            return Task.Run(async () =>
            {
                using (connection)
                {
                    await PipeEchoAsync(connection.Input, connection.Output);
                }
            });
        }

        private sealed class Client(SocketConnection connection) : IEchoClient
        {
            // One long-lived async method per connection: the harness adds no allocation per message.
            public async Task LoopAsync(byte[] message, EchoLoop loop)
            {
                Memory<byte> receive = new byte[message.Length];
                while (loop.Continue())
                {
                    long start = Stopwatch.GetTimestamp();
                    await connection.Output.WriteAsync(message);
                    int total = 0;
                    while (total < receive.Length)
                    {
                        ReadResult result = await connection.Input.ReadAsync();
                        ReadOnlySequence<byte> buffer = result.Buffer;
                        int take = (int)Math.Min(buffer.Length, receive.Length - total);
                        buffer.Slice(0, take).CopyTo(receive.Span[total..]);
                        total += take;
                        connection.Input.AdvanceTo(buffer.GetPosition(take));
                        if (result.IsCompleted && total < receive.Length)
                        {
                            throw new EndOfStreamException();
                        }
                    }
                    loop.Record(start);
                }
            }

            public async ValueTask DisposeAsync()
            {
                await connection.Output.CompleteAsync();
                connection.Dispose();
            }
        }
    }

    /// <summary>Copies everything read from <paramref name="input"/> to <paramref name="output"/> until end of stream.</summary>
    internal static async Task PipeEchoAsync(PipeReader input, PipeWriter output)
    {
        try
        {
            while (true)
            {
                ReadResult result = await input.ReadAsync();
                ReadOnlySequence<byte> buffer = result.Buffer;
                foreach (ReadOnlyMemory<byte> segment in buffer)
                {
                    output.Write(segment.Span);
                }

                input.AdvanceTo(buffer.End);
                FlushResult flush = await output.FlushAsync();
                if (result.IsCompleted || flush.IsCompleted)
                {
                    break;
                }
            }
        }
        catch (Exception e) when (e is SocketException or IOException or ConnectionResetException or ConnectionAbortedException)
        {
        }

        await output.CompleteAsync();
        await input.CompleteAsync();
    }
}
