using System.Text.Json;
using System.Text.Json.Serialization;

namespace Scheduler.Benchmarks.Compare;

/// <summary>Every sample of the run as JSON (<c>--json PATH</c>), for tracking results over time or plotting elsewhere.</summary>
internal static class JsonReport
{
    private static readonly JsonSerializerOptions s_options = new()
    {
        WriteIndented = true,
        PropertyNamingPolicy = JsonNamingPolicy.CamelCase,
        DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull,
        NumberHandling = JsonNumberHandling.AllowNamedFloatingPointLiterals,
        Converters = { new JsonStringEnumConverter(JsonNamingPolicy.CamelCase) },
    };

    public static void Write(string path, MachineInfo machine, bool quick, IReadOnlyList<CompareRow> rows)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(path);
        ArgumentNullException.ThrowIfNull(rows);
        var report = new Report(
            machine,
            quick,
            rows.Select(r => new Row(
                r.Workload,
                r.Variant,
                r.Metric.Name,
                r.Metric.Unit,
                r.Metric.Better,
                r.Metric.NoiseFloor,
                r.Ratio,
                r.Contenders.Select(c => new ContenderEntry(c.Name, c.Role, c.Median, c.Samples)).ToArray())).ToArray());

        string? directory = Path.GetDirectoryName(Path.GetFullPath(path));
        if (directory is not null)
        {
            Directory.CreateDirectory(directory);
        }

        File.WriteAllText(path, JsonSerializer.Serialize(report, s_options));
    }

    /// <summary>
    /// The rows of a report that <see cref="Write"/> wrote, with every sample: how a run that puts each workload in a
    /// process of its own (<see cref="IsolatedRunner"/>) collects the rows of its children.
    /// </summary>
    /// <exception cref="JsonException">The file is not such a report.</exception>
    public static IReadOnlyList<CompareRow> ReadRows(string path)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(path);
        RowsOnly report = JsonSerializer.Deserialize<RowsOnly>(File.ReadAllText(path), s_options)
            ?? throw new JsonException($"{path} holds no report.");
        return report.Rows.Select(r => new CompareRow(
                r.Workload,
                r.Variant,
                new Metric(r.Metric, r.Unit, r.Better, r.NoiseFloor),
                r.Contenders.Select(c => new ContenderSamples(c.Name, c.Role, c.Samples)).ToArray()))
            .ToArray();
    }

    private sealed record Report(MachineInfo Machine, bool Quick, Row[] Rows);

    private sealed record RowsOnly(Row[] Rows);

    private sealed record Row(string Workload, string? Variant, string Metric, string Unit, Better Better, double NoiseFloor, double RatioOursBetter, ContenderEntry[] Contenders);

    private sealed record ContenderEntry(string Name, ContenderRole Role, double Median, IReadOnlyList<double> Samples);
}
