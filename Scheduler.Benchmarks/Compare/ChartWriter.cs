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
        double extent = 1; // log2 units either side of 1×
        for (int i = 0; i < plotted.Length; i++)
        {
            CompareRow row = plotted[i];
            double log2 = Math.Log2(row.Ratio);
            extent = Math.Max(extent, Math.Ceiling(Math.Abs(log2)));
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
        int reach = (int)Math.Min(extent, 6);
        double[] xTicks = Enumerable.Range(-reach, (2 * reach) + 1).Select(k => (double)k).ToArray();
        string[] xLabels = xTicks.Select(k => Math.Pow(2, k).ToString("0.###", CultureInfo.InvariantCulture) + "×").ToArray();
        plot.Axes.Bottom.TickGenerator = new ScottPlot.TickGenerators.NumericManual(xTicks, xLabels);
        plot.Axes.SetLimitsX(-reach - 0.25, reach + 0.25);
        plot.Axes.SetLimitsY(-0.75, Math.Max(plotted.Length, 1) - 0.25);
        plot.Title("WorkStealingTaskScheduler vs ThreadPool");
        plot.XLabel("ours vs ThreadPool, × better (log scale; right of 1× = ours leads)");

        string? directory = Path.GetDirectoryName(Path.GetFullPath(path));
        if (directory is not null)
        {
            Directory.CreateDirectory(directory);
        }

        plot.SavePng(path, 1000, 140 + (32 * Math.Max(plotted.Length, 1)));
    }
}
