using Scheduler.Benchmarks.IO;

namespace Scheduler.Benchmarks.Compare;

internal static partial class CompareCatalog
{
    private const int EchoConnections = 256;
    private const int EchoMessageBytes = 64;

    private static string EchoSocketDescription =>
        $"ReactorSocket: loopback TCP echo in one process, {EchoConnections} connections each sending a {EchoMessageBytes}-byte message and awaiting its whole echo, back to back " +
        "(`EchoWorkloads.RunAsync`, 250 ms warm-up, then a 1 s window; 500 ms with `--quick`): `System.Net.Sockets` async methods on the ThreadPool vs ours " +
        "(`ReactorSocket` on an `IoReactor` with its own `WorkStealingTaskScheduler`, both ends) vs Pipelines.Sockets.Unofficial's `SocketConnection` pipes on both ends, " +
        "and ours again with the workers' CPU placement off (the kernel alone decides where they run). Echoed messages per second (higher is better) and the round-trip p99.";

    private static string EchoConnectionDescription =>
        "ReactorConnection: the same, with our server side on `ReactorConnection` pipes (clients on `ReactorSocket`), against the same baseline and peer.";

    private static string EchoTimeoutsDescription =>
        $"The echo row with a timeout on every server receive, the way I/O code guards requests: {EchoConnections} connections, {EchoMessageBytes}-byte messages, " +
        "each server connection arms a 30 s timeout before its receive and disarms it after (`EchoTimeouts`): `System.Net.Sockets` on the ThreadPool with `CancelAfter` + `TryReset` " +
        "on one `CancellationTokenSource` per connection, vs `ReactorSocket` with `CancelAfter(30 s)` + `CancelAfter(infinite)` on a source made with `IoReactor.Timers` " +
        "(the wheel driven by the reactor's epoll_wait: ours), vs the same on a `TimerWheel` with its own driver thread (the peer column). The last two differ only in who drives the wheel.";

    private static Comparison Echo(CompareContext context, EchoTransport ours, string variant)
    {
        Comparison comparison = new Comparison("echo", EchoMetrics(), variant)
            .Baseline("System.Net.Sockets on ThreadPool", RunEcho(context, EchoTransport.Sockets))
            .Ours(RunEcho(context, ours))
            .Peer("Pipelines.Sockets.Unofficial SocketConnection", RunEcho(context, EchoTransport.PipelinesSocketsUnofficial));
        if (ours == EchoTransport.Reactor)
        {
            // What keeping the workers on their own CPUs buys (WorkStealingTaskScheduler.Placement.cs), in every run.
            comparison = comparison.Peer("ours, workers not kept apart", RunEcho(context, ours, spreadOverCpus: false));
        }

        return comparison.WithRounds(warmups: 1, rounds: 5, quickRounds: 1); // loopback under load is noisy; 5 rounds still keep both rows near a minute
    }

    private static Comparison EchoWithTimeouts(CompareContext context) =>
        new Comparison("echo_timeouts", EchoMetrics(), "ReactorSocket, 30 s receive timeouts")
            .Baseline("System.Net.Sockets on ThreadPool", RunEcho(context, EchoTransport.Sockets, EchoTimeouts.System))
            .Ours(RunEcho(context, EchoTransport.Reactor, EchoTimeouts.ReactorWheel))
            .Peer("ours, TimerWheel with its own thread", RunEcho(context, EchoTransport.Reactor, EchoTimeouts.DedicatedWheel))
            .WithRounds(warmups: 1, rounds: 5, quickRounds: 1);

    private static Metric[] EchoMetrics() => [new("throughput", "msgs/s", Better.Higher), new("p99 RTT", "ms", Better.Lower)];

    private static MeasureRound RunEcho(CompareContext context, EchoTransport stack, EchoTimeouts timeouts = EchoTimeouts.None, bool spreadOverCpus = true)
    {
        TimeSpan duration = context.Quick ? TimeSpan.FromMilliseconds(500) : TimeSpan.FromSeconds(1);
        TimeSpan warmup = TimeSpan.FromMilliseconds(250);
        string what = (timeouts == EchoTimeouts.None ? $"echo on {stack}" : $"echo on {stack} with {timeouts} timeouts") + (spreadOverCpus ? "" : " (workers not kept apart)");
        return c =>
        {
            EchoResult result = c.Wait(EchoWorkloads.RunAsync(stack, EchoConnections, EchoMessageBytes, duration, warmup, timeouts, spreadOverCpus), what);
            if (result.Messages == 0)
            {
                throw new InvalidOperationException($"{what} echoed no message in {duration.TotalMilliseconds:F0} ms.");
            }

            return [result.MessagesPerSecond, result.P99Microseconds / 1000];
        };
    }
}
