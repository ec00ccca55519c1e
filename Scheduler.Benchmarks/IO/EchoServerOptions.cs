namespace Scheduler.Benchmarks.IO;

/// <summary>What <c>echo-server</c> serves: the parsed command line (see <see cref="Parse"/>).</summary>
internal sealed record EchoServerOptions
{
    public const string Usage = "usage: echo-server [--port 5000] [--workers N] [--unix PATH]";

    public int Port { get; init; } = 5000;

    public int Workers { get; init; } = Environment.ProcessorCount;

    /// <summary>A Unix domain socket path to listen on instead of the TCP port, or null.</summary>
    public string? UnixPath { get; init; }

    /// <summary>Parses the arguments after the command name (a leading <c>echo-server</c> is ignored).</summary>
    /// <exception cref="ArgumentException">An unknown option, a missing value, or a value out of range; the message ends with the usage.</exception>
    public static EchoServerOptions Parse(IReadOnlyList<string> args)
    {
        ArgumentNullException.ThrowIfNull(args);
        var options = new EchoServerOptions();
        for (int i = 0; i < args.Count; i++)
        {
            string option = args[i];
            options = option switch
            {
                "echo-server" when i == 0 => options,
                "--port" => options with { Port = ParsePort(option, CommandLine.Value(args, ref i, Usage)) },
                "--workers" => options with { Workers = CommandLine.Int(option, CommandLine.Value(args, ref i, Usage), min: 1, Usage) },
                "--unix" => options with { UnixPath = CommandLine.Value(args, ref i, Usage) },
                _ => throw new CommandLineException($"Unknown option '{option}'.\n{Usage}"),
            };
        }

        return options;
    }

    private static int ParsePort(string option, string text)
    {
        int port = CommandLine.Int(option, text, min: 0, Usage);
        return port <= ushort.MaxValue ? port : throw new CommandLineException($"{option} takes a port from 0 to 65535, not '{text}'.\n{Usage}");
    }
}
