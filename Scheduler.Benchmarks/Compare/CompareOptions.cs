namespace Scheduler.Benchmarks.Compare;

/// <summary>The command line of <c>compare</c>.</summary>
internal sealed record CompareOptions
{
    public const string Usage =
        "usage: compare [--quick] [--only NAME[,NAME...]] [--json PATH] [--docs DIR | --no-docs] [--in-process]\n" +
        "  --quick      fewer rounds (a first look in well under a minute)\n" +
        "  --only       run only these workloads (comma-separated)\n" +
        "  --json       also write every sample as JSON to PATH\n" +
        "  --docs       write benchmarks.md and benchmarks.png into DIR (default: the repository's docs/ after a full run)\n" +
        "  --no-docs    never write docs\n" +
        "  --in-process run every workload in this process (by default each runs in a child process of its own\n" +
        "               when more than one is selected, so no row inherits another's heap, JIT or thread state)";

    public bool Quick { get; init; }

    /// <summary>Workload names to run; null runs all.</summary>
    public IReadOnlyList<string>? Only { get; init; }

    public string? JsonPath { get; init; }

    public string? DocsDirectory { get; init; }

    public bool NoDocs { get; init; }

    /// <summary><c>--in-process</c>: run every selected workload in this process instead of one child process each.</summary>
    public bool InProcess { get; init; }

    /// <summary>A full run: every workload, full rounds. Only a full run refreshes the repository's docs by default.</summary>
    public bool IsFullRun => !Quick && Only is null;

    /// <exception cref="ArgumentException">An unknown option, a missing value, or an unknown workload name.</exception>
    public static CompareOptions Parse(IReadOnlyList<string> args, IReadOnlyList<string> knownWorkloads)
    {
        ArgumentNullException.ThrowIfNull(args);
        ArgumentNullException.ThrowIfNull(knownWorkloads);
        var options = new CompareOptions();
        for (int i = 0; i < args.Count; i++)
        {
            string arg = args[i];
            options = arg switch
            {
                "--quick" => options with { Quick = true },
                "--no-docs" => options with { NoDocs = true },
                "--in-process" => options with { InProcess = true },
                "--only" => options with { Only = ParseNames(Value(args, ref i), knownWorkloads) },
                "--json" => options with { JsonPath = Value(args, ref i) },
                "--docs" => options with { DocsDirectory = Value(args, ref i) },
                _ => throw new CommandLineException($"Unknown option '{arg}'.\n{Usage}"),
            };
        }

        if (options.NoDocs && options.DocsDirectory is not null)
        {
            throw new CommandLineException($"--docs and --no-docs contradict each other.\n{Usage}");
        }

        return options;
    }

    private static string Value(IReadOnlyList<string> args, ref int i) => CommandLine.Value(args, ref i, Usage);

    private static string[] ParseNames(string value, IReadOnlyList<string> knownWorkloads)
    {
        string[] names = value.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        if (names.Length == 0)
        {
            throw new CommandLineException($"--only needs at least one workload name.\n{Usage}");
        }

        string[] unknown = names.Where(n => !knownWorkloads.Contains(n, StringComparer.Ordinal)).ToArray();
        if (unknown.Length > 0)
        {
            throw new CommandLineException($"Unknown workload(s): {string.Join(", ", unknown)}. Known: {string.Join(", ", knownWorkloads)}.");
        }

        return names;
    }
}
