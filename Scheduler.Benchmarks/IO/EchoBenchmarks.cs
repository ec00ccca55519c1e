using BenchmarkDotNet.Attributes;

namespace Scheduler.Benchmarks.IO;

/// <summary>
/// Loopback echo throughput per stack under BenchmarkDotNet: each invocation runs the echo workload for a short
/// fixed window and reports time per echoed message; [MemoryDiagnoser] gives bytes allocated per message.
/// p50/p99 round-trip latency comes from <c>echo-bench</c> (HdrHistogram), which BDN cannot express.
/// </summary>
[MemoryDiagnoser]
public class EchoBenchmarks
{
    private const int MessagesPerConnection = 200;

    [Params(1, 16, 256)]
    public int Connections { get; set; }

    [Params(64, 16 * 1024)]
    public int MessageSize { get; set; }

    [Benchmark(Baseline = true, OperationsPerInvoke = MessagesPerConnection)]
    public Task<EchoResult> Sockets_ThreadPool() => Run(EchoStack.Sockets);

    [Benchmark(OperationsPerInvoke = MessagesPerConnection)]
    public Task<EchoResult> Reactor_WorkStealing() => Run(EchoStack.Reactor);

    [Benchmark(OperationsPerInvoke = MessagesPerConnection)]
    public Task<EchoResult> ReactorPipes_WorkStealing() => Run(EchoStack.ReactorPipes);

    [Benchmark(OperationsPerInvoke = MessagesPerConnection)]
    public Task<EchoResult> PipelinesSocketsUnofficial() => Run(EchoStack.PipelinesSocketsUnofficial);

    private Task<EchoResult> Run(EchoStack stack) =>
        EchoWorkloads.RunAsync(stack, Connections, MessageSize, TimeSpan.FromMilliseconds(200), TimeSpan.FromMilliseconds(50));
}
