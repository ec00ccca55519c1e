using System.Globalization;

namespace Scheduler.Benchmarks.IO;

/// <summary>
/// <c>echo-bench [--seconds S] [--stacks a,b] [--connections 1,16,256] [--sizes 64,16384] [--timeouts none|system|reactorwheel|dedicatedwheel]</c>:
/// runs the loopback echo matrix for each stack and prints throughput, p50/p99 round trip and bytes allocated per
/// message. With <c>--timeouts</c> other than <c>none</c> the servers arm a 30 s timeout around every receive
/// (<see cref="EchoTimeouts"/>): System.Net.Sockets with the BCL's timers, ours with <c>IoReactor.Timers</c> (or, with
/// <c>dedicatedwheel</c>, a wheel with its own thread); the pipe stacks run without.
/// </summary>
public static class EchoBenchCommand
{
    /// <summary>Runs the command; returns the process exit code.</summary>
    public static async Task<int> RunAsync(string[] args)
    {
        ArgumentNullException.ThrowIfNull(args);
        if (CommandLine.ParseOrReport("echo-bench", () => EchoBenchOptions.Parse(args)) is not { } options)
        {
            return 2;
        }

        Console.WriteLine($"{"stack",-28} {"conns",5} {"size",6} {"msgs/s",12} {"p50 us",9} {"p99 us",9} {"B/msg",8}");
        foreach (int size in options.Sizes)
        {
            foreach (int count in options.Connections)
            {
                foreach (EchoTransport stack in options.Stacks)
                {
                    // Any flavour turns timeouts on where the stack has them: the BCL's on System.Net.Sockets, the
                    // reactor's wheel on ours (or the dedicated wheel when asked for); the pipe stacks run without.
                    EchoTimeouts flavour = (options.Timeouts, stack) switch
                    {
                        (EchoTimeouts.None, _) => EchoTimeouts.None,
                        (_, EchoTransport.Sockets) => EchoTimeouts.System,
                        (EchoTimeouts.DedicatedWheel, EchoTransport.Reactor) => EchoTimeouts.DedicatedWheel,
                        (_, EchoTransport.Reactor) => EchoTimeouts.ReactorWheel,
                        _ => EchoTimeouts.None,
                    };
                    EchoResult r = await EchoWorkloads.RunAsync(stack, count, size, TimeSpan.FromSeconds(options.Seconds), timeouts: flavour);
                    string name = flavour == EchoTimeouts.None ? r.Stack.ToString() : $"{r.Stack}+{flavour}";
                    Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                        $"{name,-28} {r.Connections,5} {r.MessageSize,6} {r.MessagesPerSecond,12:N0} {r.P50Microseconds,9:N1} {r.P99Microseconds,9:N1} {r.AllocatedBytesPerMessage,8:N1}"));
                }
            }
        }

        return 0;
    }
}
