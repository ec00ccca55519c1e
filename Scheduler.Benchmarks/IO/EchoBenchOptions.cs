namespace Scheduler.Benchmarks.IO;

/// <summary>What <c>echo-bench</c> runs: the parsed command line (see <see cref="Parse"/>).</summary>
internal sealed record EchoBenchOptions
{
    public const string Usage =
        "usage: echo-bench [--seconds S] [--stacks reactor,reactorpipes,sockets,pipelinessocketsunofficial] " +
        "[--connections 1,16,256] [--sizes 64,16384] [--timeouts none|system|reactorwheel|dedicatedwheel]";

    public double Seconds { get; init; } = 2;

    public IReadOnlyList<int> Connections { get; init; } = [1, 16, 256];

    public IReadOnlyList<int> Sizes { get; init; } = [64, 16 * 1024];

    public IReadOnlyList<EchoTransport> Stacks { get; init; } =
        [EchoTransport.Reactor, EchoTransport.ReactorPipes, EchoTransport.Sockets, EchoTransport.PipelinesSocketsUnofficial];

    public EchoTimeouts Timeouts { get; init; } = EchoTimeouts.None;

    /// <summary>Parses the arguments after the command name (a leading <c>echo-bench</c> is ignored).</summary>
    /// <exception cref="ArgumentException">An unknown option, a missing value, or a value out of range; the message ends with the usage.</exception>
    public static EchoBenchOptions Parse(IReadOnlyList<string> args)
    {
        ArgumentNullException.ThrowIfNull(args);
        var options = new EchoBenchOptions();
        for (int i = 0; i < args.Count; i++)
        {
            string option = args[i];
            options = option switch
            {
                "echo-bench" when i == 0 => options,
                "--seconds" => options with { Seconds = CommandLine.PositiveNumber(option, CommandLine.Value(args, ref i, Usage), Usage) },
                "--connections" => options with { Connections = CommandLine.Ints(option, CommandLine.Value(args, ref i, Usage), min: 1, Usage) },
                "--sizes" => options with { Sizes = CommandLine.Ints(option, CommandLine.Value(args, ref i, Usage), min: 1, Usage) },
                "--stacks" => options with { Stacks = CommandLine.Names<EchoTransport>(option, CommandLine.Value(args, ref i, Usage), Usage) },
                "--timeouts" => options with { Timeouts = CommandLine.Name<EchoTimeouts>(option, CommandLine.Value(args, ref i, Usage), Usage) },
                _ => throw new CommandLineException($"Unknown option '{option}'.\n{Usage}"),
            };
        }

        return options;
    }
}
