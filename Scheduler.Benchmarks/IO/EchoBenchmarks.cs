using BenchmarkDotNet.Attributes;

namespace Scheduler.Benchmarks.IO;

/// <summary>
/// Loopback echo under BenchmarkDotNet: every connection does <see cref="MessagesPerConnection"/> round trips per
/// invocation, so the reported time is per round trip of one connection and [MemoryDiagnoser] gives bytes allocated
/// per echoed message (client and server together). p50/p99 latency comes from <c>echo-bench</c> (HdrHistogram).
/// </summary>
[MemoryDiagnoser]
public class EchoBenchmarks
{
    private const int MessagesPerConnection = 100;
    private EchoWorkloads.EchoSession? _session;

    [Params(1, 16, 256)]
    public int Connections { get; set; }

    [Params(64, 16 * 1024)]
    public int MessageSize { get; set; }

    [ParamsAllValues]
    public EchoTransport Transport { get; set; }

    [GlobalSetup]
    public void Setup() => _session = EchoWorkloads.OpenAsync(Transport, Connections, MessageSize).GetAwaiter().GetResult();

    [GlobalCleanup]
    public void Cleanup() => _session?.DisposeAsync().AsTask().GetAwaiter().GetResult();

    [Benchmark(OperationsPerInvoke = MessagesPerConnection)]
    public Task Echo() => _session!.RoundTripsAsync(MessagesPerConnection);
}
