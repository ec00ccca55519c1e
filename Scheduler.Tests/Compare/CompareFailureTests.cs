using Scheduler.Benchmarks.Compare;
using Scheduler.Tests.Scheduling;

namespace Scheduler.Tests.Compare;

/// <summary>
/// A workload that fails (throws, or hangs past the run timeout) must not leave a table that reads as complete: the
/// command exits non-zero, the table says which workloads are missing, and a full run does not republish the docs.
/// </summary>
public sealed class CompareFailureTests : IDisposable
{
    private static readonly RoundPlan s_plan = new(Warmups: 1, Rounds: 3, QuickWarmups: 1, QuickRounds: 2)
    {
        MinimumWarmupTime = TimeSpan.Zero,
        SettleHeapBeforeEachRun = false,
    };

    private readonly string _directory = Path.Combine(Path.GetTempPath(), "compare-failure-" + Guid.NewGuid().ToString("N"));

    public void Dispose()
    {
        if (Directory.Exists(_directory))
        {
            Directory.Delete(_directory, recursive: true);
        }
    }

    [Fact]
    public void A_full_run_with_a_failed_workload_exits_1_names_it_under_the_table_and_leaves_the_published_docs_alone()
    {
        string repositoryDocs = Path.Combine(_directory, "docs");
        var output = new StringWriter();
        var error = new StringWriter();

        int exitCode = CompareCommand.Run([], output, error, Catalog(failInRound: 2), s_plan, () => repositoryDocs);

        exitCode.Should().Be(1);
        Directory.Exists(repositoryDocs).Should().BeFalse("a run that lost a workload must not replace the published table with one that silently lacks it");
        string table = output.ToString();
        table.Should().Contain("| good").And.NotContain("| bad");
        table.Should().Contain("bad").And.Contain("broken in round 2", "the reader of the table must see that a row is missing and why");
        error.ToString().Should().Contain("FAILED bad").And.Contain("docs not written");
    }

    [Fact]
    public void Explicit_docs_are_written_with_the_failed_workloads_named()
    {
        string docs = Path.Combine(_directory, "out");
        var output = new StringWriter();
        var error = new StringWriter();

        int exitCode = CompareCommand.Run(["--quick", "--docs", docs], output, error, Catalog(failInRound: 1), s_plan, () => throw new InvalidOperationException("not asked for"));

        exitCode.Should().Be(1);
        string markdown = File.ReadAllText(Path.Combine(docs, DocsWriter.MarkdownFile));
        markdown.Should().Contain("| good").And.Contain("`bad`").And.Contain("broken in round 1");
    }

    [Fact]
    public void A_successful_full_run_publishes_the_docs()
    {
        string repositoryDocs = Path.Combine(_directory, "docs");

        int exitCode = CompareCommand.Run([], new StringWriter(), new StringWriter(), Catalog(failInRound: null), s_plan, () => repositoryDocs);

        exitCode.Should().Be(0);
        File.ReadAllText(Path.Combine(repositoryDocs, DocsWriter.MarkdownFile)).Should().Contain("| good").And.Contain("| bad");
    }

    [Fact]
    public void A_hung_contender_fails_its_workload_after_the_run_timeout_and_the_next_workload_still_runs()
    {
        var hung = new TaskCompletionSource();
        CompareEntry[] entries =
        [
            new("hangs", "never finishes", _ => new Comparison("hangs", [Metric.Time])
                .Baseline("baseline", _ => [1])
                .Ours(CompareContext.Timed("hangs on ours", () => hung.Task))),
            Catalog(failInRound: null)[0],
        ];
        var scheduler = new WorkStealingTaskScheduler(new WorkStealingTaskSchedulerOptions { WorkerCount = 1 });
        using var disposeScheduler = SchedulerTestHelpers.DisposeBoundedOnExit(scheduler);
        using var context = new CompareContext(scheduler, quick: true, TimeSpan.FromMilliseconds(200));
        var failures = new List<string>();

        IReadOnlyList<CompareRow> rows = new CompareRunner(context, new StringWriter(), s_plan).Run(entries, failures);

        failures.Should().ContainSingle().Which.Should().Contain("hangs").And.Contain("did not finish");
        rows.Should().ContainSingle().Which.Workload.Should().Be("good");
    }

    /// <summary>
    /// A report that cannot be written (here: a path below a regular file) is an error message and exit code 1 after
    /// the table, not an exception that escapes the command after minutes of measuring and skips the docs as well.
    /// </summary>
    [Fact]
    public void An_unwritable_json_path_is_reported_and_the_docs_are_still_written()
    {
        Directory.CreateDirectory(_directory);
        string file = Path.Combine(_directory, "a-file");
        File.WriteAllText(file, "not a directory");
        string docs = Path.Combine(_directory, "out");
        var output = new StringWriter();
        var error = new StringWriter();

        int exitCode = CompareCommand.Run(["--quick", "--only", "good", "--json", Path.Combine(file, "results.json"), "--docs", docs], output, error, Catalog(failInRound: null), s_plan, () => null);

        exitCode.Should().Be(1);
        output.ToString().Should().Contain("| good");
        error.ToString().Should().Contain("compare: cannot write").And.Contain("results.json");
        File.Exists(Path.Combine(docs, DocsWriter.MarkdownFile)).Should().BeTrue();
    }

    /// <summary>A healthy workload, then one whose ours throws in measured round <paramref name="failInRound"/> (never if null).</summary>
    private static CompareEntry[] Catalog(int? failInRound)
    {
        int oursRuns = 0;
        int warmups = s_plan.Warmups;
        return
        [
            new("good", "always works", _ => new Comparison("good", [Metric.Time])
                .Baseline("baseline", _ => [2])
                .Ours(_ => [1])),
            new("bad", "breaks", _ => new Comparison("bad", [Metric.Time])
                .Baseline("baseline", _ => [2])
                .Ours(_ =>
                {
                    int round = ++oursRuns - warmups;
                    return round == failInRound ? throw new InvalidOperationException($"broken in round {round}") : [1];
                })),
        ];
    }
}
