using BenchmarkDotNet.Running;

namespace Scheduler.Benchmarks;

/// <summary>Entry point: named commands first (compare, echo-server), else BenchmarkDotNet's switcher.</summary>
public static class Program
{
    public static int Main(string[] args)
    {
        if (args.Length > 0 && args[0] == "echo-server")
        {
            return IO.EchoServerCommand.RunAsync(args[1..]).GetAwaiter().GetResult();
        }

        if (args.Length > 0 && args[0] == "echo-bench")
        {
            return IO.EchoBenchCommand.RunAsync(args[1..]).GetAwaiter().GetResult();
        }

        BenchmarkSwitcher.FromAssembly(typeof(Program).Assembly).Run(args);
        return 0;
    }
}
