using System.Globalization;
using System.Text.Json;
using Scheduler.Benchmarks.Compare;

namespace Scheduler.Tests.Compare;

public sealed class CompareCommandTests : IDisposable
{
    private readonly string _outputDirectory = Path.Combine(Path.GetTempPath(), "compare-smoke-" + Guid.NewGuid().ToString("N"));

    public void Dispose()
    {
        if (Directory.Exists(_outputDirectory))
        {
            Directory.Delete(_outputDirectory, recursive: true);
        }
    }

    [Fact]
    public void Quick_spawn_many_local_prints_one_well_formed_row_and_writes_reports()
    {
        string docs = Path.Combine(_outputDirectory, "docs");
        string json = Path.Combine(_outputDirectory, "results.json");
        var output = new StringWriter();
        var error = new StringWriter();

        int exitCode = CompareCommand.Run(["--quick", "--only", "spawn_many_local", "--docs", docs, "--json", json], output, error);

        exitCode.Should().Be(0, "stderr was:\n{0}", error);
        string[] tableLines = output.ToString().Split('\n').Where(l => l.StartsWith('|')).ToArray();
        tableLines.Should().HaveCount(3, "a header, the alignment line and one row:\n{0}", output);

        string[] header = Cells(tableLines[0]);
        header.Should().Equal("workload", "metric", "ThreadPool / BCL", "ours", "ours vs ThreadPool (× better, >1 = ours leads)");
        Cells(tableLines[1]).Should().OnlyContain(c => c.Trim(':').Length > 0 && c.Trim(':').All(ch => ch == '-'));

        string[] row = Cells(tableLines[2]);
        row.Should().HaveCount(header.Length);
        row[0].Should().Be("spawn_many_local");
        row[1].Should().Be("time (ms)");
        double threadPool = Number(row[2]);
        double ours = Number(row[3]);
        threadPool.Should().BePositive();
        ours.Should().BePositive();
        row[4].Should().EndWith("×");
        double ratio = Number(row[4].TrimEnd('×'));
        // Time: lower is better, so the ratio is ThreadPool ÷ ours (the printed medians are rounded to ~3 digits).
        ratio.Should().BeApproximately(threadPool / ours, (threadPool / ours * 0.02) + 0.01);
        output.ToString().Should().Contain("Above 1× we lead");

        // Progress goes to stderr: the workload, its warm-up and each measured round.
        string progress = error.ToString();
        progress.Should().Contain("spawn_many_local warm-up: 1 rounds");
        progress.Should().Contain("spawn_many_local round 1/").And.Contain("spawn_many_local round 3/3");

        // Docs go where --docs says (never the repository's docs/ from a test), with the same table and a PNG chart.
        string markdown = File.ReadAllText(Path.Combine(docs, "benchmarks.md"));
        markdown.Should().Contain("| spawn_many_local").And.Contain("logical cores").And.Contain("--filter '*Scheduling*'");
        byte[] png = File.ReadAllBytes(Path.Combine(docs, "benchmarks.png"));
        png.Should().HaveCountGreaterThan(1000);
        png.Take(4).Should().Equal(0x89, (byte)'P', (byte)'N', (byte)'G');

        using JsonDocument report = JsonDocument.Parse(File.ReadAllText(json));
        JsonElement jsonRow = report.RootElement.GetProperty("rows").EnumerateArray().Single();
        jsonRow.GetProperty("workload").GetString().Should().Be("spawn_many_local");
        jsonRow.GetProperty("contenders").EnumerateArray().Should().HaveCount(2)
            .And.OnlyContain(c => c.GetProperty("samples").GetArrayLength() == 3);
    }

    [Theory]
    [InlineData("--only", "no_such_workload")]
    [InlineData("--bogus")]
    [InlineData("--json")]
    public void Bad_arguments_exit_with_2_and_explain(params string[] args)
    {
        var output = new StringWriter();
        var error = new StringWriter();

        int exitCode = CompareCommand.Run(args, output, error);

        exitCode.Should().Be(2);
        output.ToString().Should().BeEmpty();
        error.ToString().Should().MatchRegex("Unknown|needs a value");
    }

    private static string[] Cells(string line) =>
        line.Trim().Trim('|').Split('|').Select(c => c.Trim()).ToArray();

    private static double Number(string cell) =>
        double.Parse(cell, NumberStyles.Float, CultureInfo.InvariantCulture);
}
