using Scheduler.Benchmarks.IO;

namespace Scheduler.Benchmarks.Compare;

internal static partial class CompareCatalog
{
    private const int EchoConnections = 256;
    private const int EchoMessageBytes = 64;

    private static string EchoSocketDescription =>
        $"ReactorSocket: loopback TCP echo in one process, {EchoConnections} connections each sending a {EchoMessageBytes}-byte message and awaiting its whole echo, back to back " +
        "(`EchoWorkloads.RunAsync`, 250 ms warm-up, then a 1 s window; 500 ms with `--quick`): `System.Net.Sockets` async methods on the ThreadPool vs ours " +
        "(`ReactorSocket` on an `IoReactor` with its own `WorkStealingTaskScheduler`, both ends) vs Pipelines.Sockets.Unofficial's `SocketConnection` pipes on both ends. " +
        "Echoed messages per second (higher is better) and the round-trip p99.";

    private static string EchoConnectionDescription =>
        "ReactorConnection: the same, with our server side on `ReactorConnection` pipes (clients on `ReactorSocket`), against the same baseline and peer.";

    private static Comparison Echo(CompareContext context, EchoTransport ours, string variant)
    {
        const string What = "echo";
        TimeSpan duration = context.Quick ? TimeSpan.FromMilliseconds(500) : TimeSpan.FromSeconds(1);
        TimeSpan warmup = TimeSpan.FromMilliseconds(250);
        Metric[] metrics = [new("throughput", "msgs/s", Better.Higher), new("p99 RTT", "ms", Better.Lower)];
        return new Comparison(What, metrics, variant)
            .Baseline("System.Net.Sockets on ThreadPool", Run(EchoTransport.Sockets))
            .Ours(Run(ours))
            .Peer("Pipelines.Sockets.Unofficial SocketConnection", Run(EchoTransport.PipelinesSocketsUnofficial))
            .WithRounds(warmups: 1, rounds: 5, quickRounds: 1); // loopback under load is noisy; 5 rounds still keep both rows near 50 s

        MeasureRound Run(EchoTransport stack) => c =>
        {
            EchoResult result = c.Wait(EchoWorkloads.RunAsync(stack, EchoConnections, EchoMessageBytes, duration, warmup), $"{What} on {stack}");
            if (result.Messages == 0)
            {
                throw new InvalidOperationException($"{What} on {stack} echoed no message in {duration.TotalMilliseconds:F0} ms.");
            }

            return [result.MessagesPerSecond, result.P99Microseconds / 1000];
        };
    }
}
