namespace Scheduler.Benchmarks.Compare;

/// <summary>
/// A row group the <c>compare</c> command knows: its workload name (what <c>--only</c> matches), what it measures
/// (printed in docs/benchmarks.md), and how to build the comparison when the run selects it.
/// </summary>
internal sealed record CompareEntry(string Name, string Description, Func<CompareContext, Comparison> Create);
