using BenchmarkDotNet.Running;

namespace Scheduler.Benchmarks;

/// <summary>Entry point: named commands first (compare, echo-server), else BenchmarkDotNet's switcher.</summary>
public static class Program
{
    public static int Main(string[] args)
    {
        BenchmarkSwitcher.FromAssembly(typeof(Program).Assembly).Run(args);
        return 0;
    }
}
