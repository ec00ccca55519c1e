using System.Text.Json;
using Scheduler.Benchmarks.Compare;

namespace Scheduler.Tests.Compare;

/// <summary>
/// A run of several workloads puts each in a child process of its own (so no row inherits another's GC budget, JIT
/// profile or threads) and gathers their rows; one child that fails, crashes or hangs costs only its own rows.
/// </summary>
public sealed class IsolatedRunnerTests
{
    private static readonly TimeSpan s_timeout = TimeSpan.FromMinutes(1);

    [Fact]
    public void Each_workload_runs_in_its_own_child_whose_rows_and_progress_are_gathered_in_order()
    {
        var calls = new List<IReadOnlyList<string>>();
        var progress = new StringWriter();
        var failures = new List<string>();

        IReadOnlyList<CompareRow> rows = new IsolatedRunner(FakeChild(calls), progress, s_timeout)
            .Run(Entries("alpha", "beta", "beta", "gamma"), quick: true, failures);

        failures.Should().BeEmpty();
        calls.Select(Workload).Should().Equal(["alpha", "beta", "gamma"], "the two entries of beta (its variants) share one child, as --only beta runs both");
        calls.Should().OnlyContain(a => a[0] == "compare" && a.Contains("--in-process") && a.Contains("--no-docs") && a.Contains("--quick"));
        rows.Select(r => (r.Workload, r.Variant)).Should().Equal(("alpha", "first"), ("beta", "first"), ("beta", "second"), ("gamma", "first"));
        rows[1].Ours.Samples.Should().Equal([1.5, 2.5, 3.5], "every sample survives the trip through the child's report");
        rows[1].Metric.Should().Be(new Metric("time", "ms", Better.Lower, NoiseFloor: 0.25));

        string[] lines = progress.ToString().Split(Environment.NewLine, StringSplitOptions.RemoveEmptyEntries);
        lines.Should().Equal(
            ["[1/4] alpha round 1/1: ok", "[2/4] beta round 1/1: ok", "[3/4] beta round 1/1: ok", "[4/4] gamma round 1/1: ok"],
            "each child's [k/m] becomes the entry's place in the whole run, and the child's own header is not repeated");
    }

    [Fact]
    public void A_full_run_passes_no_quick_flag()
    {
        var calls = new List<IReadOnlyList<string>>();

        new IsolatedRunner(FakeChild(calls), new StringWriter(), s_timeout).Run(Entries("alpha", "beta"), quick: false, []);

        calls.Should().HaveCount(2).And.OnlyContain(a => !a.Contains("--quick"));
    }

    [Fact]
    public void A_failing_crashing_or_hanging_child_costs_only_its_own_rows_and_is_named()
    {
        var progress = new StringWriter();
        var failures = new List<string>();
        ChildCompare healthy = FakeChild([]);
        ChildCompare child = (arguments, onErrorLine, timeout) => Workload(arguments) switch
        {
            "threw" => Fail(onErrorLine, "[1/1] threw FAILED: boom", "compare: FAILED threw: boom"),
            "crashed" => 134,
            "hung" => throw new TimeoutException("its process did not finish within 10 min and was killed."),
            _ => healthy(arguments, onErrorLine, timeout),
        };

        IReadOnlyList<CompareRow> rows = new IsolatedRunner(child, progress, s_timeout)
            .Run(Entries("alpha", "threw", "crashed", "hung", "omega"), quick: true, failures);

        rows.Select(r => r.Workload).Should().Equal("alpha", "omega");
        failures.Should().Equal(
            "threw: boom",
            "crashed: its process exited with code 134",
            "hung: its process did not finish within 10 min and was killed.");
        string text = progress.ToString();
        text.Should().Contain("[2/5] threw FAILED: boom").And.Contain("[3/5] crashed FAILED: its process exited with code 134").And.Contain("[4/5] hung FAILED");
        text.Split("threw FAILED").Should().HaveCount(2, "the child already said why it failed; the parent does not say it twice");
    }

    [Theory]
    [InlineData("[1/1] spawn_many_local round 3/21: ThreadPool 1 ms", 4, 20, "[5/20] spawn_many_local round 3/21: ThreadPool 1 ms")]
    [InlineData("[2/2] timer_create_cancel warm-up: 3 rounds", 17, 20, "[19/20] timer_create_cancel warm-up: 3 rounds")]
    [InlineData("compare: 1 workload(s), full mode, 2 cores", 0, 20, null)]
    [InlineData("compare: wrote /tmp/x.json", 0, 20, null)]
    [InlineData("Unhandled exception. System.Exception: oops", 0, 20, "Unhandled exception. System.Exception: oops")]
    public void Child_progress_is_retagged_with_the_entrys_place_in_the_run(string line, int first, int total, string? expected) =>
        IsolatedRunner.Retag(line, first, total).Should().Be(expected);

    [Fact]
    public void The_command_isolates_a_run_of_several_workloads_unless_told_in_process()
    {
        var calls = new List<IReadOnlyList<string>>();
        var plan = new RoundPlan(Warmups: 1, Rounds: 1, QuickWarmups: 1, QuickRounds: 1) { MinimumWarmupTime = TimeSpan.Zero, SettleHeapBeforeEachRun = false };
        int inProcessRuns = 0;
        CompareEntry[] catalog = new[] { "alpha", "beta" }.Select(name => new CompareEntry(name, "test", _ => new Comparison(name, [Metric.Time])
            .Baseline("baseline", _ => [2])
            .Ours(_ =>
            {
                inProcessRuns++;
                return [1];
            }))).ToArray();

        var error = new StringWriter();
        CompareCommand.Run(["--quick", "--no-docs"], new StringWriter(), error, catalog, plan, () => null, FakeChild(calls)).Should().Be(0);
        calls.Select(Workload).Should().Equal("alpha", "beta");
        inProcessRuns.Should().Be(0);
        error.ToString().Should().Contain("each workload in a process of its own");

        calls.Clear();
        CompareCommand.Run(["--quick", "--no-docs", "--in-process"], new StringWriter(), new StringWriter(), catalog, plan, () => null, FakeChild(calls)).Should().Be(0);
        CompareCommand.Run(["--quick", "--no-docs", "--only", "beta"], new StringWriter(), new StringWriter(), catalog, plan, () => null, FakeChild(calls)).Should().Be(0);
        calls.Should().BeEmpty("--in-process, and a run of one workload, measure in this process");
        inProcessRuns.Should().Be(2 * 2 + 2, "two workloads, then one, each one warm-up round and one measured round");
    }

    [Fact]
    public void A_real_run_of_two_workloads_gathers_both_from_their_own_processes()
    {
        string directory = Directory.CreateTempSubdirectory("isolated-run-").FullName;
        try
        {
            string json = Path.Combine(directory, "results.json");
            var output = new StringWriter();
            var error = new StringWriter();

            int exitCode = CompareCommand.Run(["--quick", "--only", "pipe_schedule,spawn_many_local", "--json", json, "--no-docs"], output, error);

            exitCode.Should().Be(0, "stderr was:\n{0}", error);
            error.ToString().Should().Contain("each workload in a process of its own")
                .And.Contain("[1/2] spawn_many_local round 1/").And.Contain("[2/2] pipe_schedule round 1/");
            output.ToString().Should().Contain("| spawn_many_local").And.Contain("| pipe_schedule");
            using JsonDocument report = JsonDocument.Parse(File.ReadAllText(json));
            report.RootElement.GetProperty("rows").EnumerateArray().Select(r => r.GetProperty("workload").GetString())
                .Should().Equal("spawn_many_local", "pipe_schedule");
        }
        finally
        {
            Directory.Delete(directory, recursive: true);
        }
    }

    private static string Workload(IReadOnlyList<string> arguments) => arguments[arguments.ToList().IndexOf("--only") + 1];

    private static int Fail(Action<string> onErrorLine, params string[] lines)
    {
        foreach (string line in lines)
        {
            onErrorLine(line);
        }

        return 1;
    }

    private static CompareEntry[] Entries(params string[] names) =>
        names.Select(n => new CompareEntry(n, "test", _ => throw new InvalidOperationException("runs in the child"))).ToArray();

    /// <summary>
    /// A child that behaves like <c>compare --only NAME --json PATH</c>: its header, one progress line per entry of the
    /// workload (the fake catalog's beta has two), and a report with one row per entry.
    /// </summary>
    private static ChildCompare FakeChild(List<IReadOnlyList<string>> calls) => (arguments, onErrorLine, _) =>
    {
        lock (calls)
        {
            calls.Add(arguments);
        }

        string name = Workload(arguments);
        string[] variants = name == "beta" ? ["first", "second"] : ["first"];
        onErrorLine($"compare: 1 workload(s), quick mode, 2 cores, .NET, in this process (1)");
        for (int i = 0; i < variants.Length; i++)
        {
            onErrorLine($"[{i + 1}/{variants.Length}] {name} round 1/1: ok");
        }

        var metric = new Metric("time", "ms", Better.Lower, NoiseFloor: 0.25);
        CompareRow[] rows = variants.Select(v => new CompareRow(name, v, metric,
        [
            new ContenderSamples("baseline", ContenderRole.Baseline, [2, 3, 4]),
            new ContenderSamples("ours", ContenderRole.Ours, [1.5, 2.5, 3.5]),
        ])).ToArray();
        JsonReport.Write(arguments[arguments.ToList().IndexOf("--json") + 1], MachineInfo.Collect(), quick: true, rows);
        onErrorLine("compare: wrote it");
        return 0;
    };
}
