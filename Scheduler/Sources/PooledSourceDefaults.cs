namespace Scheduler.Sources;

/// <summary>Settings and helpers shared by the built-in pooled sources.</summary>
internal static class PooledSourceDefaults
{
    /// <summary>
    /// How many idle sources each pool (one per result type) keeps: enough for a burst of in-flight operations
    /// per core, small enough that a burst of a million rentals cannot pin memory afterwards.
    /// </summary>
    public static readonly int PoolCapacity = Math.Max(256, Environment.ProcessorCount * 64);
}
