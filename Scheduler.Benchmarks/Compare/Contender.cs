namespace Scheduler.Benchmarks.Compare;

/// <summary>Where a contender's figure goes in the table.</summary>
internal enum ContenderRole
{
    /// <summary>The ThreadPool or BCL figure every ratio is relative to.</summary>
    Baseline,

    /// <summary>This library.</summary>
    Ours,

    /// <summary>Another library doing the same job (its own column).</summary>
    Peer,
}

/// <summary>Runs one measured round of a contender and returns one value per metric of its comparison.</summary>
internal delegate double[] MeasureRound(CompareContext context);

/// <summary>One side of a comparison: a name for the column/progress, its role, and how to measure one round.</summary>
internal sealed record Contender(string Name, ContenderRole Role, MeasureRound Measure);
