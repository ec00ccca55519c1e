namespace Scheduler.Benchmarks.Compare;

/// <summary>
/// One row group of the table: a workload, its metrics, and the contenders measured on it (a baseline, ours,
/// any peers). Build one with the fluent methods; it owns (and disposes) any resources its peers need.
/// </summary>
internal sealed class Comparison : IDisposable
{
    private readonly List<Contender> _contenders = [];
    private readonly List<IDisposable> _owned = [];

    public Comparison(string workload, IReadOnlyList<Metric> metrics, string? variant = null)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(workload);
        ArgumentNullException.ThrowIfNull(metrics);
        if (metrics.Count == 0)
        {
            throw new ArgumentException("A comparison needs at least one metric.", nameof(metrics));
        }

        Workload = workload;
        Metrics = metrics;
        Variant = variant;
    }

    /// <summary>The workload name printed in the first column (exactly the names of issue 6).</summary>
    public string Workload { get; }

    /// <summary>Distinguishes rows of the same workload, e.g. <c>Tasks</c> or <c>pooled wakers</c> for ping_pong.</summary>
    public string? Variant { get; }

    public IReadOnlyList<Metric> Metrics { get; }

    public IReadOnlyList<Contender> Contenders => _contenders;

    /// <summary>Rounds when not in quick mode (null: the command's default).</summary>
    public int? Rounds { get; private set; }

    /// <summary>Rounds in quick mode (null: the command's default).</summary>
    public int? QuickRounds { get; private set; }

    /// <summary>Warm-up rounds (null: the command's default).</summary>
    public int? Warmups { get; private set; }

    /// <summary>Times <paramref name="body"/> on <see cref="TaskScheduler.Default"/> (baseline) and on our scheduler.</summary>
    public static Comparison Timed(CompareContext context, string workload, Func<TaskScheduler, Task> body, string? variant = null)
    {
        ArgumentNullException.ThrowIfNull(context);
        ArgumentNullException.ThrowIfNull(body);
        return new Comparison(workload, [Metric.Time], variant)
            .Baseline("ThreadPool", CompareContext.Timed(workload + " on the ThreadPool", () => body(TaskScheduler.Default)))
            .Ours(CompareContext.Timed(workload + " on ours", () => body(context.Scheduler)));
    }

    /// <summary>
    /// Like <see cref="Timed(CompareContext, string, Func{TaskScheduler, Task}, string?)"/>, plus a peer column for ours with
    /// <see cref="WorkStealingTaskSchedulerOptions.UseSynchronizationContext"/> on: for await-heavy workloads, where
    /// the option replaces the BCL's Task per resumption with a synchronization-context post.
    /// </summary>
    public static Comparison TimedWithSynchronizationContextPeer(CompareContext context, string workload, Func<TaskScheduler, Task> body, string? variant = null) =>
        Timed(context, workload, body, variant)
            .PeerTimed(SynchronizationContextPeer, () => body(context.SynchronizationContextScheduler));

    /// <summary>The column name of ours with <see cref="WorkStealingTaskSchedulerOptions.UseSynchronizationContext"/> on.</summary>
    public const string SynchronizationContextPeer = "ours, UseSynchronizationContext";

    /// <summary>
    /// Times two different bodies: <paramref name="baseline"/> (the BCL way, e.g. TaskCompletionSource on the ThreadPool)
    /// against <paramref name="ours"/> (e.g. pooled wakers on our scheduler). Chain <see cref="PeerTimed"/> for peers.
    /// </summary>
    public static Comparison Timed(string workload, string baselineName, Func<Task> baseline, Func<Task> ours, string? variant = null) =>
        new Comparison(workload, [Metric.Time], variant)
            .Baseline(baselineName, CompareContext.Timed($"{workload} on {baselineName}", baseline))
            .Ours(CompareContext.Timed(workload + " on ours", ours));

    /// <summary>Adds a peer whose run is timed like the baseline's and ours (single <see cref="Metric.Time"/> comparisons).</summary>
    public Comparison PeerTimed(string name, Func<Task> start) => Peer(name, CompareContext.Timed($"{Workload} on {name}", start));

    public Comparison Baseline(string name, MeasureRound measure) => Add(new Contender(name, ContenderRole.Baseline, measure));

    public Comparison Ours(MeasureRound measure) => Add(new Contender("ours", ContenderRole.Ours, measure));

    public Comparison Peer(string name, MeasureRound measure) => Add(new Contender(name, ContenderRole.Peer, measure));

    /// <summary>Overrides the round counts for an expensive probe (e.g. one that watches an idle process for a second).</summary>
    public Comparison WithRounds(int warmups, int rounds, int quickRounds)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(warmups);
        ArgumentOutOfRangeException.ThrowIfLessThan(rounds, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(quickRounds, 1);
        Warmups = warmups;
        Rounds = rounds;
        QuickRounds = quickRounds;
        return this;
    }

    /// <summary>Disposes <paramref name="resource"/> with the comparison (e.g. a peer's thread pool).</summary>
    public Comparison Owning(IDisposable resource)
    {
        ArgumentNullException.ThrowIfNull(resource);
        _owned.Add(resource);
        return this;
    }

    public void Dispose()
    {
        foreach (IDisposable resource in _owned)
        {
            resource.Dispose();
        }

        _owned.Clear();
    }

    private Comparison Add(Contender contender)
    {
        if (contender.Role != ContenderRole.Peer && _contenders.Exists(c => c.Role == contender.Role))
        {
            throw new InvalidOperationException($"{Workload} already has a {contender.Role} contender.");
        }

        _contenders.Add(contender);
        return this;
    }
}
