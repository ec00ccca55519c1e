namespace Scheduler.Benchmarks.Compare;

/// <summary>Which way a metric improves.</summary>
internal enum Better
{
    /// <summary>Smaller is better: time, latency, CPU, bytes.</summary>
    Lower,

    /// <summary>Larger is better: throughput.</summary>
    Higher,
}

/// <summary>One measured quantity of a comparison (a comparison may report several, e.g. p50 and p99).</summary>
/// <param name="Name">What is measured, e.g. <c>time</c> or <c>p99</c>.</param>
/// <param name="Unit">Unit of the values, e.g. <c>ms</c>.</param>
/// <param name="Better">Which way is better; decides how the ratio is formed.</param>
/// <param name="NoiseFloor">
/// Values below this are indistinguishable from zero for this probe (e.g. idle CPU); both sides are clamped
/// to it before the ratio is formed, so two idle schedulers compare as 1.0× instead of noise over noise.
/// </param>
internal sealed record Metric(string Name, string Unit, Better Better, double NoiseFloor = 0)
{
    /// <summary>Wall-clock time of one run of the workload.</summary>
    public static Metric Time { get; } = new("time", "ms", Better.Lower);

    /// <summary>The label of the metric column, e.g. <c>time (ms)</c>.</summary>
    public string Label => $"{Name} ({Unit})";

    /// <summary>
    /// How many times better <paramref name="ours"/> is than <paramref name="baseline"/>: baseline ÷ ours when lower is
    /// better, ours ÷ baseline when higher is better. Above 1 we lead, below 1 we trail; NaN when undefined.
    /// </summary>
    public double Advantage(double baseline, double ours)
    {
        double b = Math.Max(baseline, NoiseFloor);
        double o = Math.Max(ours, NoiseFloor);
        if (!(b > 0) || !(o > 0) || double.IsInfinity(b) || double.IsInfinity(o))
        {
            return double.NaN;
        }

        return Better == Better.Lower ? b / o : o / b;
    }
}
