using System.Diagnostics;

namespace Scheduler.Tests.Scheduling;

/// <summary>
/// <see cref="WorkStealingTaskSchedulerOptions.SpinIterations"/> is how long an idle worker polls before it parks: 0 parks at
/// once, a large value keeps it polling. Load can only end a spell early through a preemption cut (and the pause that may
/// follow it), which the worker counts; so each test reads that count to tell "load parked it" from "the option was
/// ignored", and holds on any load. In the serial group: a test here keeps a worker spinning on a CPU for a while.
/// </summary>
[Collection(SerialResourceGroup.Name)]
public sealed class SpinIterationsTests
{
    // Long enough that a worker that spins the default 512 polls (~100-120 µs) or not at all has parked meanwhile; the
    // worker that honours the option does not park in it, so each gap costs this much in full.
    private static readonly TimeSpan Gap = TimeSpan.FromMilliseconds(15);

    [Fact]
    public async Task With_zero_spin_iterations_an_idle_worker_parks_at_once()
    {
        var scheduler = new WorkStealingTaskScheduler(new WorkStealingTaskSchedulerOptions { WorkerCount = 1, SpinIterations = 0, ThreadNamePrefix = "Test" });
        await using var disposeScheduler = SchedulerTestHelpers.DisposeWithin(scheduler);
        SpinWait.SpinUntil(() => scheduler.IsWorkerParked(0), SchedulerTestHelpers.Timeout).Should().BeTrue("the worker has nothing to do");

        long parkingAt = 0;
        using var parking = new SemaphoreSlim(0);
        scheduler.ParkHookForTests = () =>
        {
            parkingAt = Stopwatch.GetTimestamp();
            parking.Release();
        };

        // From the end of an item to the worker's park: a few microseconds without a spell, ~100 µs with 512 polls. Load
        // only lengthens a sample, so the shortest one tells whether the worker polled before it parked.
        const int Samples = 50;
        var delays = new double[Samples];
        for (int i = 0; i < Samples; i++)
        {
            long finishedAt = 0;
            scheduler.EnqueueToWorker(0, new SchedulerTestHelpers.RecordingWorkItem(() => finishedAt = Stopwatch.GetTimestamp()));
            (await parking.WaitAsync(SchedulerTestHelpers.Timeout)).Should().BeTrue("an idle worker parks");
            delays[i] = Stopwatch.GetElapsedTime(finishedAt, parkingAt).TotalMicroseconds;
        }

        scheduler.ParkHookForTests = null;

        // A worker that never spins is never cut short; a spinning one could be, and could then skip its spells for a
        // while (parking at once), so a cut fails the test instead of excusing a short sample.
        scheduler.SpinsCutShortPerWorker[0].Should().Be(0, "a worker configured not to spin never spins");
        delays.Min().Should().BeLessThan(20, $"with SpinIterations = 0 the worker parks as soon as it runs out of work (delays in µs, sorted: {string.Join(", ", delays.Order().Select(d => d.ToString("F1", System.Globalization.CultureInfo.InvariantCulture)))})");
    }

    [Fact]
    public async Task A_worker_with_a_long_spell_keeps_polling_through_gaps_and_parks_only_after_a_preemption_cut()
    {
        // Work arrives with gaps of milliseconds; with ~7 minutes of polls per spell, only a spell that preemption cut
        // short (on a loaded machine) may end in a park. A park while the worker has never been cut means the spell
        // ended on its own: the option was ignored. Fresh schedulers: each starts with no cut, so load would have to cut
        // the very first spell of every round for a worker that ignores the option to pass.
        const int Rounds = 4;
        const int GapsPerRound = 3;
        int uncutParks = 0;
        int cutRounds = 0;
        for (int round = 0; round < Rounds; round++)
        {
            var scheduler = new WorkStealingTaskScheduler(new WorkStealingTaskSchedulerOptions { WorkerCount = 1, SpinIterations = int.MaxValue, ThreadNamePrefix = "Test" });
            using var parking = new SemaphoreSlim(0);
            scheduler.ParkHookForTests = () =>
            {
                // On the worker, which alone writes its cut count: exact.
                if (scheduler.SpinsCutShortPerWorker[0] == 0)
                {
                    Interlocked.Increment(ref uncutParks);
                }

                parking.Release();
            };

            try
            {
                for (int gap = 0; gap < GapsPerRound; gap++)
                {
                    await Task.Factory.StartNew(static () => { }, CancellationToken.None, TaskCreationOptions.None, scheduler).WithTimeout();
                    await parking.WaitAsync(Gap); // ends early only for a worker that parks
                }
            }
            finally
            {
                scheduler.ParkHookForTests = null;
                if (scheduler.SpinsCutShortPerWorker[0] != 0)
                {
                    cutRounds++;
                }

                await scheduler.DisposeAsync().AsTask().WithTimeout(); // a spell ends at once when disposal is requested
            }
        }

        Volatile.Read(ref uncutParks).Should().Be(0, $"a worker with SpinIterations = int.MaxValue polls for minutes unless preemption cuts its spell short ({cutRounds} of {Rounds} rounds had a cut)");
    }

    [Fact]
    public async Task A_worker_parks_when_its_spell_of_polls_ends_without_a_cut()
    {
        // 1,024 polls last ~0.2 ms: the spell ends on its own and the worker parks. A spell that never ended (a loop
        // that counts the wrong way) or that took every stretch for a cut would park only after a cut, so the test
        // counts parks with no cut since the item ended (read on the worker, which alone writes the count: exact). Load
        // may cut some spells, so one uncut park of up to twenty is enough.
        var scheduler = new WorkStealingTaskScheduler(new WorkStealingTaskSchedulerOptions { WorkerCount = 1, SpinIterations = 1024, ThreadNamePrefix = "Test" });
        await using var disposeScheduler = SchedulerTestHelpers.DisposeWithin(scheduler);
        long cutsWhenTheItemEnded = -1;
        int uncutParks = 0;
        using var parking = new SemaphoreSlim(0);
        scheduler.ParkHookForTests = () =>
        {
            if (scheduler.SpinsCutShortPerWorker[0] == Volatile.Read(ref cutsWhenTheItemEnded))
            {
                Interlocked.Increment(ref uncutParks);
            }

            parking.Release();
        };

        try
        {
            for (int item = 0; item < 20 && Volatile.Read(ref uncutParks) == 0; item++)
            {
                scheduler.EnqueueToWorker(0, new SchedulerTestHelpers.RecordingWorkItem(() => Volatile.Write(ref cutsWhenTheItemEnded, scheduler.SpinsCutShortPerWorker[0])));
                await parking.WaitAsync(TimeSpan.FromSeconds(2)); // ends early once the worker parks
            }
        }
        finally
        {
            scheduler.ParkHookForTests = null;
        }

        Volatile.Read(ref uncutParks).Should().BePositive($"a spell of 1,024 polls ends after ~0.2 ms and the worker parks ({scheduler.SpinsCutShortPerWorker[0]} spells were cut)");
    }
}
