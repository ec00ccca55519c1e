using System.Globalization;
using ScottPlot;

namespace Scheduler.Benchmarks.Compare;

/// <summary>
/// Draws the ratio column as a horizontal bar chart (PNG, headless): one bar per row starting at 1×, on a log2
/// axis so 2× ahead and 2× behind are the same length. Green bars point right (we lead), red bars left (we trail).
/// </summary>
internal static class ChartWriter
{
    public static void Write(string path, IReadOnlyList<CompareRow> rows)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(path);
        ArgumentNullException.ThrowIfNull(rows);
        CompareRow[] plotted = rows.Where(r => double.IsFinite(r.Ratio) && r.Ratio > 0).ToArray();

        var plot = new Plot();
        var bars = new List<Bar>();
        var positions = new double[plotted.Length];
        var labels = new string[plotted.Length];
        // log2 units either side of 1×, at most 64×: a count that drops to zero (early timer firings) or bytes that
        // drop to amortised setup would otherwise squash every other bar; longer bars stop at the edge, labelled in full.
        double extent = Math.Max(1, plotted.Select(r => Math.Ceiling(Math.Abs(Math.Log2(r.Ratio)))).DefaultIfEmpty(1).Max());
        int reach = (int)Math.Min(extent, 6);
        for (int i = 0; i < plotted.Length; i++)
        {
            CompareRow row = plotted[i];
            double log2 = Math.Clamp(Math.Log2(row.Ratio), -reach, reach);
            double position = plotted.Length - 1 - i; // first row on top
            positions[i] = position;
            labels[i] = row.Variant is null ? $"{row.Workload} {row.Metric.Name}" : $"{row.Workload} {row.Metric.Name} ({row.Variant})";
            bars.Add(new Bar
            {
                Position = position,
                ValueBase = 0,
                Value = log2,
                FillColor = log2 >= 0 ? Color.FromHex("#2e9e44") : Color.FromHex("#d0433a"),
                Label = MarkdownTable.FormatRatio(row.Ratio),
            });
        }

        var barPlot = plot.Add.Bars(bars);
        barPlot.Horizontal = true;
        var one = plot.Add.VerticalLine(0);
        one.Color = Colors.Black;
        one.LineWidth = 1;

        plot.Axes.Left.TickGenerator = new ScottPlot.TickGenerators.NumericManual(positions, labels);
        double[] xTicks = Enumerable.Range(-reach, (2 * reach) + 1).Select(k => (double)k).ToArray();
        string[] xLabels = xTicks.Select(k => Math.Pow(2, k).ToString("0.###", CultureInfo.InvariantCulture) + "×").ToArray();
        plot.Axes.Bottom.TickGenerator = new ScottPlot.TickGenerators.NumericManual(xTicks, xLabels);
        // Room for the labels of capped bars beyond the last tick.
        bool capped = extent > reach;
        plot.Axes.SetLimitsX(-reach - (capped ? 1.5 : 0.25), reach + (capped ? 1.5 : 0.25));
        plot.Axes.SetLimitsY(-0.75, Math.Max(plotted.Length, 1) - 0.25);
        plot.Title("Scheduler library vs ThreadPool / BCL");
        plot.XLabel("ours vs ThreadPool / BCL, × better (log scale, bars stop at 64×; right = ours leads)");

        string? directory = Path.GetDirectoryName(Path.GetFullPath(path));
        if (directory is not null)
        {
            Directory.CreateDirectory(directory);
        }

        plot.SavePng(path, 1000, 140 + (32 * Math.Max(plotted.Length, 1)));
    }
}
