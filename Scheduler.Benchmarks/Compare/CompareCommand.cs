using System.Runtime.ExceptionServices;

namespace Scheduler.Benchmarks.Compare;

/// <summary>
/// <c>compare</c>: one side-by-side table of our scheduler against the ThreadPool (and peers) in a few minutes.
/// The table goes to <c>output</c>, progress and errors to <c>error</c>; exit code 0 on success, 1 when a workload
/// failed or a report could not be written, 2 on bad arguments. Public so tests and tools can run it in-process with their own writers.
/// </summary>
public static class CompareCommand
{
    private static readonly TimeSpan s_runTimeout = TimeSpan.FromMinutes(2);

    // A whole workload (warm-up and rounds) in its child process: the longest take about a minute.
    private static readonly TimeSpan s_childTimeout = TimeSpan.FromMinutes(10);

    /// <summary>Runs <c>compare</c> with <paramref name="args"/> (without the word <c>compare</c>).</summary>
    public static int Run(IReadOnlyList<string> args, TextWriter output, TextWriter error) =>
        Run(args, output, error, CompareCatalog.Entries, RoundPlan.Default, FindRepositoryDocs, IsolatedRunner.RunThisAssembly);

    /// <summary>
    /// <see cref="Run(IReadOnlyList{string}, TextWriter, TextWriter)"/> with its parts replaceable (tests): the catalog,
    /// the round counts, where a full run publishes its docs (null: not found), and how a workload runs in a child
    /// process of its own (null: every workload runs in this process, as with <c>--in-process</c>).
    /// </summary>
    internal static int Run(IReadOnlyList<string> args, TextWriter output, TextWriter error, IReadOnlyList<CompareEntry> catalog, RoundPlan plan, Func<string?> repositoryDocs, ChildCompare? child = null)
    {
        ArgumentNullException.ThrowIfNull(args);
        ArgumentNullException.ThrowIfNull(output);
        ArgumentNullException.ThrowIfNull(error);
        ArgumentNullException.ThrowIfNull(catalog);
        ArgumentNullException.ThrowIfNull(plan);
        ArgumentNullException.ThrowIfNull(repositoryDocs);

        CompareOptions options;
        try
        {
            options = CompareOptions.Parse(args, catalog.Select(e => e.Name).Distinct().ToArray());
        }
        catch (ArgumentException e)
        {
            error.WriteLine(e.Message);
            return 2;
        }

        // The harness runs on a dedicated thread: were it a ThreadPool thread blocked in waits, the ThreadPool side
        // would run one worker short (and inject threads), and "outside" producers would be ThreadPool-local ones.
        int exitCode = 1;
        ExceptionDispatchInfo? failure = null;
        var harness = new Thread(() =>
        {
            try
            {
                exitCode = RunCore(options, catalog, plan, repositoryDocs, child, output, error);
            }
            catch (Exception e)
            {
                failure = ExceptionDispatchInfo.Capture(e);
            }
        })
        {
            Name = "compare harness",
        };
        harness.Start();
        harness.Join();
        failure?.Throw();
        return exitCode;
    }

    private static int RunCore(CompareOptions options, IReadOnlyList<CompareEntry> catalog, RoundPlan plan, Func<string?> repositoryDocs, ChildCompare? child, TextWriter output, TextWriter error)
    {
        CompareEntry[] selected = options.Only is null
            ? catalog.ToArray()
            : catalog.Where(e => options.Only.Contains(e.Name, StringComparer.Ordinal)).ToArray();

        // One process per workload unless asked otherwise; a single workload runs here (it has no neighbour to inherit
        // from, and the child of an isolated run is such a run).
        bool isolated = child is not null && !options.InProcess && selected.Length > 1;
        MachineInfo machine = MachineInfo.Collect();
        error.WriteLine($"compare: {selected.Length} workload(s), {(options.Quick ? "quick" : "full")} mode, {machine.LogicalCores} cores, {machine.Runtime}, " +
            (isolated ? "each workload in a process of its own" : $"in this process ({Environment.ProcessId})"));

        var failures = new List<string>();
        IReadOnlyList<CompareRow> rows;
        if (isolated)
        {
            rows = new IsolatedRunner(child!, error, s_childTimeout).Run(selected, options.Quick, failures);
        }
        else
        {
            using var context = new CompareContext(options.Quick, s_runTimeout);
            rows = new CompareRunner(context, error, plan).Run(selected, failures);
        }

        output.Write(MarkdownTable.Render(rows));
        output.WriteLine();
        output.WriteLine(MarkdownTable.RatioLegend);
        if (failures.Count > 0)
        {
            // Under the table too, not only at the end of the progress: a table without a row reads as complete.
            output.WriteLine();
            output.Write(MarkdownTable.RenderFailures(failures));
        }

        // A report that cannot be written is an error after the table (already printed), not an exception that
        // escapes minutes of measuring and skips the other report.
        bool written = true;
        if (options.JsonPath is not null)
        {
            written &= TryWrite(options.JsonPath, () => JsonReport.Write(options.JsonPath, machine, options.Quick, rows), error);
        }

        string? docs = DocsDirectory(options, failures.Count, repositoryDocs, error);
        if (docs is not null && rows.Count > 0)
        {
            string markdown = Path.Combine(docs, DocsWriter.MarkdownFile);
            written &= TryWrite(markdown, () => DocsWriter.Write(docs, machine, options, isolated, rows, catalog, failures), error, $"{markdown} and {DocsWriter.ChartFile}");
        }

        foreach (string failed in failures)
        {
            error.WriteLine($"compare: FAILED {failed}");
        }

        return failures.Count == 0 && written ? 0 : 1;
    }

    private static bool TryWrite(string path, Action write, TextWriter error, string? written = null)
    {
        try
        {
            write();
            error.WriteLine($"compare: wrote {written ?? path}");
            return true;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or NotSupportedException or ArgumentException)
        {
            error.WriteLine($"compare: cannot write {path}: {e.Message}");
            return false;
        }
    }

    /// <summary>
    /// Where to write docs: <c>--docs DIR</c>; else the repository's docs/ after a full run in which every workload
    /// succeeded; else nowhere.
    /// </summary>
    private static string? DocsDirectory(CompareOptions options, int failureCount, Func<string?> repositoryDocs, TextWriter error)
    {
        if (options.NoDocs)
        {
            return null;
        }

        if (options.DocsDirectory is not null)
        {
            return options.DocsDirectory;
        }

        if (!options.IsFullRun)
        {
            return null; // a partial or quick run must not replace the published full table
        }

        if (failureCount > 0)
        {
            // Nor may a full run that lost a workload: its table would silently lack that workload's rows.
            error.WriteLine($"compare: {failureCount} workload(s) failed; docs not written, the published table stays as it was (--docs DIR writes them anyway).");
            return null;
        }

        string? docs = repositoryDocs();
        if (docs is null)
        {
            error.WriteLine("compare: repository root (Scheduler.sln) not found from the current directory; docs not written (use --docs DIR).");
        }

        return docs;
    }

    /// <summary>The docs/ folder of the repository that holds the current directory, or null.</summary>
    private static string? FindRepositoryDocs()
    {
        for (DirectoryInfo? dir = new(Environment.CurrentDirectory); dir is not null; dir = dir.Parent)
        {
            if (File.Exists(Path.Combine(dir.FullName, "Scheduler.sln")))
            {
                return Path.Combine(dir.FullName, "docs");
            }
        }

        return null;
    }
}
