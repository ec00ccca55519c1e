using BenchmarkDotNet.Running;
using Scheduler.Benchmarks.Compare;

namespace Scheduler.Benchmarks;

/// <summary>Entry point: named commands first, anything else goes to BenchmarkDotNet's switcher.</summary>
public static class Program
{
    public static int Main(string[] args) => args switch
    {
        ["compare", .. var rest] => CompareCommand.Run(rest, Console.Out, Console.Error),
        _ => RunBenchmarks(args),
    };

    private static int RunBenchmarks(string[] args)
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
