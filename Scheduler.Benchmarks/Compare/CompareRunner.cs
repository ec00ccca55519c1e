using System.Diagnostics;
using System.Globalization;

namespace Scheduler.Benchmarks.Compare;

/// <summary>Default round counts; a comparison may override them (see <see cref="Comparison.WithRounds"/>).</summary>
internal sealed record RoundPlan(int Warmups, int Rounds, int QuickWarmups, int QuickRounds)
{
    public static RoundPlan Default { get; } = new(Warmups: 2, Rounds: 21, QuickWarmups: 1, QuickRounds: 3);

    /// <summary>
    /// Outside <c>--quick</c>, warm-up goes on past <see cref="Warmups"/> rounds until every contender has run this long
    /// in total. Our library is IL compiled at run time: tier 0, then (after the runtime's 100 ms tiering delay, which
    /// restarts whenever new tier-0 code appears, and on a background thread that competes with two busy workers for two
    /// cores) instrumented code, then tier 1. The BCL side starts from precompiled ReadyToRun code. Two fixed rounds of a
    /// 10 ms workload measured ours on tier-0 code: ping_pong with pooled wakers took 27 ms a run for the first ~15 runs
    /// and 11 ms once tiered.
    /// </summary>
    public TimeSpan MinimumWarmupTime { get; init; } = TimeSpan.FromSeconds(1.5);

    /// <summary>Upper bound on warm-up rounds, however short the runs.</summary>
    public int MaximumWarmups { get; init; } = 60;

    /// <summary>
    /// A full blocking GC before every run (the default), so nobody pays for the previous run's garbage. Tests of the
    /// runner turn it off: hundreds of full collections pause every thread of the test process, and a timer test
    /// running alongside measured one such storm as its timer firing 2.9 s late.
    /// </summary>
    public bool SettleHeapBeforeEachRun { get; init; } = true;
}

/// <summary>
/// Runs comparisons the honest way: warm-up rounds first (JIT tiers, pools, thread injection), then measured rounds
/// in which every contender runs once per round, the order rotating each round so neither side always runs on the
/// other's leftovers (caches, GC debt, spinning threads); a full GC settles the heap before each run. Progress goes
/// to the progress writer (stderr).
/// </summary>
internal sealed class CompareRunner(CompareContext context, TextWriter progress, RoundPlan plan)
{
    /// <summary>
    /// Rows of every comparison that completed; failures are reported on the progress writer and listed in
    /// <paramref name="failures"/>, one <c>name: reason</c> each.
    /// </summary>
    public IReadOnlyList<CompareRow> Run(IReadOnlyList<CompareEntry> entries, List<string> failures)
    {
        ArgumentNullException.ThrowIfNull(entries);
        ArgumentNullException.ThrowIfNull(failures);
        var rows = new List<CompareRow>();
        for (int i = 0; i < entries.Count; i++)
        {
            string tag = $"[{i + 1}/{entries.Count}] {entries[i].Name}";
            try
            {
                rows.AddRange(RunOne(entries[i], tag));
            }
            catch (Exception e)
            {
                // One broken workload must not cost the whole table; the command still exits non-zero.
                progress.WriteLine($"{tag} FAILED: {e.GetBaseException().Message}");
                failures.Add($"{entries[i].Name}: {e.GetBaseException().Message}");
            }
        }

        return rows;
    }

    private List<CompareRow> RunOne(CompareEntry entry, string tag)
    {
        using Comparison comparison = entry.Create(context);
        IReadOnlyList<Contender> contenders = comparison.Contenders;
        if (!contenders.Any(c => c.Role == ContenderRole.Baseline) || !contenders.Any(c => c.Role == ContenderRole.Ours))
        {
            throw new InvalidOperationException($"{entry.Name} needs a baseline and ours.");
        }

        int warmups = context.Quick
            ? Math.Min(comparison.Warmups ?? plan.QuickWarmups, plan.QuickWarmups)
            : comparison.Warmups ?? plan.Warmups;
        int rounds = context.Quick ? comparison.QuickRounds ?? plan.QuickRounds : comparison.Rounds ?? plan.Rounds;

        Warmup(comparison, tag, warmups, context.Quick ? TimeSpan.Zero : plan.MinimumWarmupTime);

        var samples = contenders.ToDictionary(c => c, _ => comparison.Metrics.Select(_ => new List<double>()).ToArray());
        for (int r = 0; r < rounds; r++)
        {
            var line = new List<string>();
            for (int k = 0; k < contenders.Count; k++)
            {
                Contender contender = contenders[(r + k) % contenders.Count];
                SchedulerStatistics before = context.SchedulerStatistics;
                double[] values = Measure(comparison, contender);
                SchedulerStatistics after = context.SchedulerStatistics;
                for (int m = 0; m < values.Length; m++)
                {
                    samples[contender][m].Add(values[m]);
                }

                // Our scheduler's counters for our run: a first clue when a row looks wrong (steals, parks, inlining).
                // Rows whose workload brings its own scheduler (echo) or none (timers) leave them untouched: nothing to show.
                bool ranOnOurs = after.TasksExecuted != before.TasksExecuted;
                string counters = contender.Role == ContenderRole.Ours && ranOnOurs ? " " + DescribeCounters(before, after) : string.Empty;
                line.Add($"{contender.Name} {Describe(comparison.Metrics, values)}{counters}");
            }

            progress.WriteLine($"{tag} round {r + 1}/{rounds}: {string.Join(" | ", line)}");
        }

        return comparison.Metrics
            .Select((metric, m) => new CompareRow(
                comparison.Workload,
                comparison.Variant,
                metric,
                contenders.Select(c => new ContenderSamples(c.Name, c.Role, samples[c][m])).ToArray()))
            .ToList();
    }

    private void Warmup(Comparison comparison, string tag, int minimumRounds, TimeSpan minimumTime)
    {
        IReadOnlyList<Contender> contenders = comparison.Contenders;
        var warmedFor = new TimeSpan[contenders.Count];
        int round = 0;
        while (round < minimumRounds || (round < plan.MaximumWarmups && warmedFor.Any(t => t < minimumTime)))
        {
            for (int k = 0; k < contenders.Count; k++)
            {
                Measure(comparison, contenders[k], out TimeSpan elapsed);
                warmedFor[k] += elapsed;
            }

            round++;
        }

        progress.WriteLine($"{tag} warm-up: {round} rounds ({string.Join(", ", contenders.Select((c, k) => $"{c.Name} {warmedFor[k].TotalSeconds:F1} s"))})");
    }

    private double[] Measure(Comparison comparison, Contender contender) => Measure(comparison, contender, out _);

    private double[] Measure(Comparison comparison, Contender contender, out TimeSpan elapsed)
    {
        // Each run starts from a settled heap, so nobody pays for the previous run's garbage.
        if (plan.SettleHeapBeforeEachRun)
        {
            GC.Collect();
            GC.WaitForPendingFinalizers();
            GC.Collect();
        }

        long begin = Stopwatch.GetTimestamp();
        double[] values = contender.Measure(context);
        elapsed = Stopwatch.GetElapsedTime(begin);
        if (values.Length != comparison.Metrics.Count)
        {
            throw new InvalidOperationException($"{comparison.Workload}/{contender.Name} returned {values.Length} values for {comparison.Metrics.Count} metrics.");
        }

        return values;
    }

    private static string DescribeCounters(SchedulerStatistics before, SchedulerStatistics after) =>
        string.Create(
            CultureInfo.InvariantCulture,
            $"[executed {after.TasksExecuted - before.TasksExecuted}, stolen {after.TasksStolen - before.TasksStolen}, inlined {after.TasksInlined - before.TasksInlined}, parks {after.WorkerParks - before.WorkerParks}, wakeups {after.WorkerWakeups - before.WorkerWakeups}]");

    private static string Describe(IReadOnlyList<Metric> metrics, double[] values) =>
        metrics.Count == 1
            ? $"{MarkdownTable.FormatValue(values[0])} {metrics[0].Unit}"
            : string.Join(", ", metrics.Select((m, i) => string.Create(CultureInfo.InvariantCulture, $"{m.Name} {MarkdownTable.FormatValue(values[i])} {m.Unit}")));
}
