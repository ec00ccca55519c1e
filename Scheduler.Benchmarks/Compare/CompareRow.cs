namespace Scheduler.Benchmarks.Compare;

/// <summary>One contender's measured values of one metric, in round order.</summary>
internal sealed record ContenderSamples(string Name, ContenderRole Role, IReadOnlyList<double> Samples)
{
    /// <summary>The median of the rounds: what the table reports (robust to a round disturbed by other load).</summary>
    public double Median => Statistics.Median(Samples);
}

/// <summary>One table row: one metric of one comparison, with every contender's samples.</summary>
internal sealed record CompareRow(string Workload, string? Variant, Metric Metric, IReadOnlyList<ContenderSamples> Contenders)
{
    public ContenderSamples Baseline => Contenders.Single(c => c.Role == ContenderRole.Baseline);

    public ContenderSamples Ours => Contenders.Single(c => c.Role == ContenderRole.Ours);

    public IEnumerable<ContenderSamples> Peers => Contenders.Where(c => c.Role == ContenderRole.Peer);

    /// <summary>How many times better ours is than the baseline (above 1: we lead). See <see cref="Metric.Advantage"/>.</summary>
    public double Ratio => Metric.Advantage(Baseline.Median, Ours.Median);

    /// <summary>The metric column: <c>time (ms)</c>, or <c>time (ms) · Tasks</c> for a variant.</summary>
    public string MetricLabel => Variant is null ? Metric.Label : $"{Metric.Label} · {Variant}";
}

/// <summary>Small statistics helpers for the harness.</summary>
internal static class Statistics
{
    public static double Median(IReadOnlyList<double> values)
    {
        ArgumentNullException.ThrowIfNull(values);
        if (values.Count == 0)
        {
            return double.NaN;
        }

        double[] sorted = [.. values];
        Array.Sort(sorted);
        int middle = sorted.Length / 2;
        return sorted.Length % 2 == 1 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2;
    }
}
