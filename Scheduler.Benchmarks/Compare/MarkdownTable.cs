using System.Globalization;
using System.Text;

namespace Scheduler.Benchmarks.Compare;

/// <summary>Renders the comparison rows as one Markdown table (padded, so it also reads well in a terminal).</summary>
internal static class MarkdownTable
{
    /// <summary>Header of the baseline column.</summary>
    public const string BaselineHeader = "ThreadPool / BCL";

    /// <summary>Header of our column.</summary>
    public const string OursHeader = "ours";

    /// <summary>Header of the ratio column: says which way is better.</summary>
    public const string RatioHeader = "ours vs ThreadPool (× better, >1 = ours leads)";

    /// <summary>The sentence that explains the ratio column, printed under the table.</summary>
    public const string RatioLegend =
        "The last column is how many times better ours is than the ThreadPool/BCL figure on that row's metric: " +
        "ThreadPool ÷ ours for time, latency, CPU and bytes (lower is better), ours ÷ ThreadPool for throughput. " +
        "Above 1× we lead, below 1× we trail. Every figure is the median of interleaved rounds in one process (one per workload unless run with --in-process).";

    public static string Render(IReadOnlyList<CompareRow> rows)
    {
        ArgumentNullException.ThrowIfNull(rows);
        List<string> peers = PeerNames(rows);
        var header = new List<string> { "workload", "metric", BaselineHeader, OursHeader };
        header.AddRange(peers);
        header.Add(RatioHeader);

        var cells = new List<string[]> { header.ToArray() };
        foreach (CompareRow row in rows)
        {
            var line = new List<string> { row.Workload, row.MetricLabel, FormatValue(row.Baseline.Median), FormatValue(row.Ours.Median) };
            foreach (string peer in peers)
            {
                ContenderSamples? match = row.Peers.FirstOrDefault(p => p.Name == peer);
                line.Add(match is null ? "–" : FormatValue(match.Median));
            }

            line.Add(FormatRatio(row.Ratio));
            cells.Add(line.ToArray());
        }

        int[] widths = Enumerable.Range(0, header.Count).Select(c => cells.Max(r => r[c].Length)).ToArray();
        var text = new StringBuilder();
        AppendLine(text, cells[0], widths, numeric: null);
        text.Append('|');
        for (int c = 0; c < widths.Length; c++)
        {
            // Text columns left-aligned, figures right-aligned.
            text.Append(c < 2 ? ' ' + new string('-', widths[c]) + " |" : ' ' + new string('-', widths[c] - 1) + ": |");
        }

        text.Append('\n');
        foreach (string[] line in cells.Skip(1))
        {
            AppendLine(text, line, widths, numeric: 2);
        }

        return text.ToString();
    }

    /// <summary>Peer column names, in order of first appearance.</summary>
    public static List<string> PeerNames(IReadOnlyList<CompareRow> rows) =>
        rows.SelectMany(r => r.Peers).Select(p => p.Name).Distinct().ToList();

    /// <summary>
    /// The workloads that failed (each <c>name: reason</c>, as <see cref="CompareRunner.Run"/> lists them) as a Markdown
    /// list for under the table, which has no row for them.
    /// </summary>
    public static string RenderFailures(IReadOnlyList<string> failures)
    {
        ArgumentNullException.ThrowIfNull(failures);
        var text = new StringBuilder("**Failed, so not in the table:**\n\n");
        foreach (string failure in failures)
        {
            int colon = failure.IndexOf(": ", StringComparison.Ordinal);
            string name = colon < 0 ? failure : failure[..colon];
            string reason = colon < 0 ? string.Empty : ": " + failure[(colon + 2)..].ReplaceLineEndings(" ");
            text.Append("- `").Append(name).Append('`').Append(reason).Append('\n');
        }

        return text.ToString();
    }

    /// <summary>About three significant digits, invariant culture, no thousands separators (easy to parse back).</summary>
    public static string FormatValue(double value)
    {
        if (double.IsNaN(value) || double.IsInfinity(value))
        {
            return "n/a";
        }

        double magnitude = Math.Abs(value);
        int decimals = magnitude switch
        {
            0 => 0,
            >= 100 => 0,
            >= 10 => 1,
            >= 1 => 2,
            _ => Math.Min(6, 2 - (int)Math.Floor(Math.Log10(magnitude))),
        };
        return value.ToString("F" + decimals.ToString(CultureInfo.InvariantCulture), CultureInfo.InvariantCulture);
    }

    public static string FormatRatio(double ratio) =>
        double.IsNaN(ratio) || double.IsInfinity(ratio) ? "n/a" : ratio.ToString("F2", CultureInfo.InvariantCulture) + "×";

    private static void AppendLine(StringBuilder text, string[] line, int[] widths, int? numeric)
    {
        text.Append('|');
        for (int c = 0; c < line.Length; c++)
        {
            string cell = numeric is int firstNumeric && c >= firstNumeric ? line[c].PadLeft(widths[c]) : line[c].PadRight(widths[c]);
            text.Append(' ').Append(cell).Append(" |");
        }

        text.Append('\n');
    }
}
