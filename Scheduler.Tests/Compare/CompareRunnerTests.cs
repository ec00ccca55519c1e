using Scheduler.Benchmarks.Compare;
using Scheduler.Tests.Scheduling;

namespace Scheduler.Tests.Compare;

public sealed class CompareRunnerTests
{
    /// <summary>
    /// Short runs keep warming up until every contender has run for the plan's minimum time: a fixed count of rounds
    /// left ours (IL compiled at run time, tier 0 first) measured against the BCL's precompiled code.
    /// </summary>
    [Fact]
    public void Warm_up_goes_on_until_every_contender_ran_the_minimum_time()
    {
        var plan = RoundPlan.Default with { Warmups = 2, Rounds = 3, MinimumWarmupTime = TimeSpan.FromMilliseconds(250), MaximumWarmups = 1_000, SettleHeapBeforeEachRun = false };

        // Each run sleeps at least 1 ms, so 250 ms of warm-up is at most 250 rounds; it is well beyond the fixed 2 unless
        // every sleep overran by 40 ms. (With 60 ms, an overrun of 10 ms per sleep, which a machine shared with busy
        // processes can give a thread waking from Thread.Sleep(1), ended the warm-up after 5 rounds: correctly.) Both
        // contenders run once per round. The runner times runs by the wall clock, so a contender's thread held off its
        // core for a fraction of a second in its first rounds warms it up just as correctly: up to five attempts, the
        // first with more than 5 rounds counts. A fixed count of rounds never gets there, in any attempt.
        int baselineRuns = 0, oursRuns = 0, warmups = 0;
        string progress = string.Empty;
        for (int attempt = 0; attempt < 5 && warmups <= 5; attempt++)
        {
            (baselineRuns, oursRuns, progress) = RunCounting(plan, quick: false, baselineSleep: 1, oursSleep: 1);
            warmups = oursRuns - plan.Rounds;
        }

        warmups.Should().BeGreaterThan(5, "warm-up goes on until each contender ran 250 ms").And.BeLessThanOrEqualTo(250, "and stops once both did");
        baselineRuns.Should().Be(oursRuns);
        progress.Should().MatchRegex(@"w warm-up: \d+ rounds \(baseline \d\.\d s, ours \d\.\d s\)");
    }

    [Fact]
    public void Warm_up_rounds_are_capped_and_quick_mode_keeps_the_fixed_count()
    {
        var plan = RoundPlan.Default with { Warmups = 2, Rounds = 3, QuickWarmups = 1, QuickRounds = 1, MinimumWarmupTime = TimeSpan.FromSeconds(30), MaximumWarmups = 4, SettleHeapBeforeEachRun = false };

        RunCounting(plan, quick: false, baselineSleep: 1, oursSleep: 1).OursRuns.Should().Be(4 + 3, "the cap bounds warm-up however short the runs");
        RunCounting(plan, quick: true, baselineSleep: 1, oursSleep: 1).OursRuns.Should().Be(1 + 1, "--quick is a first look: its fixed warm-up count only");
    }

    private static (int BaselineRuns, int OursRuns, string Progress) RunCounting(RoundPlan plan, bool quick, int baselineSleep, int oursSleep)
    {
        int baselineRuns = 0, oursRuns = 0;
        var entry = new CompareEntry("w", "a test workload", _ => new Comparison("w", [Metric.Time])
            .Baseline("baseline", _ => Run(ref baselineRuns, baselineSleep))
            .Ours(_ => Run(ref oursRuns, oursSleep)));
        var scheduler = new WorkStealingTaskScheduler(new WorkStealingTaskSchedulerOptions { WorkerCount = 1 });
        using var disposeScheduler = SchedulerTestHelpers.DisposeBoundedOnExit(scheduler);
        using var context = new CompareContext(scheduler, quick, TimeSpan.FromSeconds(30));
        var progress = new StringWriter();
        var failures = new List<string>();

        IReadOnlyList<CompareRow> rows = new CompareRunner(context, progress, plan).Run([entry], failures);

        failures.Should().BeEmpty();
        rows.Should().ContainSingle().Which.Ours.Samples.Should().HaveCount(quick ? plan.QuickRounds : plan.Rounds);
        return (baselineRuns, oursRuns, progress.ToString());
    }

    private static double[] Run(ref int runs, int sleepMilliseconds)
    {
        runs++;
        Thread.Sleep(sleepMilliseconds);
        return [sleepMilliseconds];
    }
}
