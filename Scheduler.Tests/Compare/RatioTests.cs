using Scheduler.Benchmarks.Compare;

namespace Scheduler.Tests.Compare;

/// <summary>The "× better" column and the medians it is formed from (docs/benchmarks.md, under the table).</summary>
public sealed class RatioTests
{
    [Theory]
    [InlineData(false, 0.0, 10.0, 5.0, 2.0)] // time, latency, bytes: ThreadPool ÷ ours
    [InlineData(false, 0.0, 5.0, 10.0, 0.5)]
    [InlineData(true, 0.0, 100.0, 150.0, 1.5)] // throughput: ours ÷ ThreadPool
    [InlineData(true, 0.0, 150.0, 100.0, 2.0 / 3)]
    [InlineData(false, 1.0, 0.3, 0.29, 1.0)] // both below the noise floor (idle CPU): a tie
    [InlineData(false, 1.0, 45_224.0, 0.0, 45_224.0)] // a count that drops to zero counts as 1
    [InlineData(false, 1.0, 0.0, 0.0, 1.0)] // zero bytes on both sides
    public void The_ratio_is_direction_aware_and_clamped_to_the_noise_floor(bool higherIsBetter, double noiseFloor, double baseline, double ours, double expected)
    {
        new Metric("m", "u", higherIsBetter ? Better.Higher : Better.Lower, noiseFloor).Advantage(baseline, ours).Should().BeApproximately(expected, 1e-9);
    }

    [Theory]
    [InlineData(0.0, 5.0)]
    [InlineData(5.0, 0.0)]
    [InlineData(-1.0, 5.0)]
    [InlineData(double.NaN, 5.0)]
    [InlineData(double.PositiveInfinity, 5.0)]
    public void Without_a_noise_floor_a_zero_negative_or_undefined_figure_gives_no_ratio(double baseline, double ours)
    {
        double ratio = new Metric("m", "u", Better.Lower).Advantage(baseline, ours);

        ratio.Should().Be(double.NaN);
        MarkdownTable.FormatRatio(ratio).Should().Be("n/a");
    }

    [Fact]
    public void Medians_of_odd_and_even_counts_and_the_row_ratio_of_medians()
    {
        Statistics.Median([3.0, 1.0, 2.0]).Should().Be(2.0);
        Statistics.Median([4.0, 1.0, 3.0, 2.0]).Should().Be(2.5);
        Statistics.Median([]).Should().Be(double.NaN);

        var row = new CompareRow("w", null, Metric.Time,
        [
            new ContenderSamples("ThreadPool", ContenderRole.Baseline, [10, 30, 20, 1000]),
            new ContenderSamples("ours", ContenderRole.Ours, [5, 10, 15]),
        ]);
        row.Ratio.Should().Be(25.0 / 10.0, "median 25 (an outlier round does not move it) over median 10");
    }
}
