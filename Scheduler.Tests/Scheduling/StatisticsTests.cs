using System.Diagnostics.Metrics;
using Scheduler.Tests.Sources;

namespace Scheduler.Tests.Scheduling;

public sealed class StatisticsTests
{
    [Fact]
    public async Task Counters_track_executed_stolen_inlined_parks_and_wakeups()
    {
        var scheduler = SchedulerTestHelpers.Create(2, spin: 0);
        await using var disposeScheduler = SchedulerTestHelpers.DisposeWithin(scheduler);
        await scheduler.Factory.StartNew(() => { }).WithTimeout();

        // Both workers parked, so that the work below must wake them. A fixed 50 ms pause stood for that; on a loaded
        // machine a worker may not have parked yet, take the next task by itself, and nothing is woken.
        await SchedulerTestHelpers.WaitUntilAsync(() => scheduler.IsWorkerParked(0) && scheduler.IsWorkerParked(1));

        // Worker A spawns children and stays busy until they are done: only a thief can run them.
        await scheduler.Factory.StartNew(() =>
        {
            int done = 0;
            for (int i = 0; i < 100; i++)
            {
                Task.Factory.StartNew(() => Interlocked.Increment(ref done), CancellationToken.None, TaskCreationOptions.None, scheduler);
            }

            var deadline = DateTime.UtcNow + SchedulerTestHelpers.Timeout;
            while (Volatile.Read(ref done) < 99 && DateTime.UtcNow < deadline)
            {
                Thread.SpinWait(100);
            }
        }).WithTimeout();

        await scheduler.Factory.StartNew(() =>
        {
            Task<int> child = Task.Factory.StartNew(() => 1, CancellationToken.None, TaskCreationOptions.None, scheduler);
            return child.Result;
        }).WithTimeout();

        await SchedulerTestHelpers.WaitUntilAsync(() => scheduler.GetStatistics().TasksExecuted >= 102);
        SchedulerStatistics stats = scheduler.GetStatistics();
        stats.TasksExecuted.Should().BeGreaterThanOrEqualTo(102);
        stats.TasksStolen.Should().BePositive();
        stats.TasksInlined.Should().BePositive();
        stats.WorkerParks.Should().BePositive();
        stats.WorkerWakeups.Should().BePositive();
        stats.QueuedTasks.Should().BeGreaterThanOrEqualTo(0);
    }

    /// <summary>
    /// A work item that throws (a callback, a post from an async void method) was executed all the same, as the
    /// ThreadPool counts it: its exception is raised as unhandled and the worker goes on. Fails with the count left out of
    /// the worker's catch (session 45's mutation run of the worker's loop).
    /// </summary>
    [Fact]
    public async Task A_work_item_that_throws_still_counts_as_executed()
    {
        UnhandledExceptions.EnsureInstalled(); // marks the deliberate failures handled
        var scheduler = SchedulerTestHelpers.Create(1);
        await using var disposeScheduler = SchedulerTestHelpers.DisposeWithin(scheduler);
        await scheduler.Factory.StartNew(() => { }).WithTimeout();
        await SchedulerTestHelpers.WaitUntilAsync(() => scheduler.GetStatistics().TasksExecuted == 1);
        int thrown = 0;
        for (int i = 0; i < 10; i++)
        {
            scheduler.EnqueueToWorker(0, new SchedulerTestHelpers.RecordingWorkItem(() =>
            {
                Interlocked.Increment(ref thrown);
                throw new CountedFailureException();
            }));
        }

        await SchedulerTestHelpers.WaitUntilAsync(() => scheduler.GetStatistics().TasksExecuted == 11);
        Volatile.Read(ref thrown).Should().Be(10);
        scheduler.GetStatistics().TasksExecuted.Should().Be(11, "one task and ten items that threw");
    }

    [Fact]
    public async Task A_work_item_that_throws_on_a_compensation_thread_still_counts_as_executed()
    {
        // The same count for what a compensation thread runs (kills: RunCompensated, the increment in its catch removed).
        UnhandledExceptions.EnsureInstalled();
        var scheduler = SchedulerTestHelpers.Create(1);
        await using var disposeScheduler = SchedulerTestHelpers.DisposeWithin(scheduler);
        using var hold = new ManualResetEventSlim();
        Task holder = scheduler.Factory.StartNew(() => hold.Wait(SchedulerTestHelpers.Timeout)); // the only worker
        int thrown = 0;
        bool onWorker = false;
        for (int i = 0; i < 10; i++)
        {
            scheduler.Enqueue(new SchedulerTestHelpers.RecordingWorkItem(() =>
            {
                if (scheduler.IsWorkerThread)
                {
                    Volatile.Write(ref onWorker, true); // only ever set: racing items cannot clear it
                }

                Interlocked.Increment(ref thrown);
                throw new CountedFailureException();
            }));
        }

        await SchedulerTestHelpers.WaitUntilAsync(() => Volatile.Read(ref thrown) == 10);
        Volatile.Read(ref onWorker).Should().BeFalse("the worker is held: a compensation thread ran them");
        await SchedulerTestHelpers.WaitUntilAsync(() => scheduler.GetStatistics().TasksExecuted == 10);
        scheduler.GetStatistics().TasksExecuted.Should().Be(10, "ten items that threw, the held task not yet");
        hold.Set();
        await holder.WithTimeout();
    }

    private sealed class CountedFailureException() : DeliberateTestException("a work item's deliberate failure");

    [Fact]
    public async Task Counters_never_go_back_under_load_and_add_up_exactly_once_quiet()
    {
        var scheduler = SchedulerTestHelpers.Create(2);
        await using var disposeScheduler = SchedulerTestHelpers.DisposeWithin(scheduler);
        const int Parents = 2_000;
        using var stop = new CancellationTokenSource();
        var snapshots = new List<SchedulerStatistics>();
        var sampler = new Thread(() =>
        {
            while (!stop.IsCancellationRequested && snapshots.Count < 20_000)
            {
                snapshots.Add(scheduler.GetStatistics());
                Thread.SpinWait(50);
            }
        });
        sampler.Start();

        // Each parent spawns a child and blocks on it: some children are inlined, some stolen, some run first.
        Task<int>[] parents = Enumerable.Range(0, Parents).Select(i => scheduler.Factory.StartNew(() =>
            scheduler.Factory.StartNew(() => i).Result)).ToArray();
        (await Task.WhenAll(parents).WithTimeout()).Should().Equal(Enumerable.Range(0, Parents));

        const int Tasks = 2 * Parents;
        await SchedulerTestHelpers.WaitUntilAsync(() => scheduler.GetStatistics() is { } s && s.TasksExecuted + s.TasksInlined >= Tasks);
        stop.Cancel();
        sampler.Join();

        SchedulerStatistics quiet = scheduler.GetStatistics();
        (quiet.TasksExecuted + quiet.TasksInlined).Should().Be(Tasks, "every task is counted once, executed or inlined");
        quiet.QueuedTasks.Should().Be(0);
        quiet.WorkerWakeups.Should().BeLessThanOrEqualTo(quiet.WorkerParks);
        snapshots.Add(quiet);
        var backwards = new List<string>();
        for (int i = 1; i < snapshots.Count; i++)
        {
            SchedulerStatistics before = snapshots[i - 1], after = snapshots[i];
            if (after.TasksExecuted < before.TasksExecuted || after.TasksInlined < before.TasksInlined
                || after.TasksStolen < before.TasksStolen || after.WorkerParks < before.WorkerParks
                || after.WorkerWakeups < before.WorkerWakeups || after.QueuedTasks < 0)
            {
                backwards.Add($"{before} -> {after}");
            }
        }

        backwards.Should().BeEmpty("counters only grow and the queue length is never negative");
    }

    [Fact]
    public async Task A_single_worker_steals_nothing_so_TasksStolen_counts_only_work_taken_from_a_peer()
    {
        // The other tests only see TasksStolen positive; with one worker there is no peer to steal from, whatever the
        // queues the work went through (global queue, deque, LIFO slot, inbox, inlined waits).
        var scheduler = SchedulerTestHelpers.Create(1);
        await using var disposeScheduler = SchedulerTestHelpers.DisposeWithin(scheduler);
        await Task.WhenAll(Enumerable.Range(0, 50).Select(_ => scheduler.Factory.StartNew(() =>
        {
            Task child = Task.Factory.StartNew(() => { }, CancellationToken.None, TaskCreationOptions.None, scheduler);
            Task fair = Task.Factory.StartNew(() => { }, CancellationToken.None, TaskCreationOptions.PreferFairness, scheduler);
            Task.WaitAll(child, fair);
        }))).WithTimeout();

        const int Tasks = 150;
        await SchedulerTestHelpers.WaitUntilAsync(() => scheduler.GetStatistics() is { } s && s.TasksExecuted + s.TasksInlined >= Tasks);
        SchedulerStatistics stats = scheduler.GetStatistics();
        (stats.TasksExecuted + stats.TasksInlined).Should().Be(Tasks);
        stats.TasksStolen.Should().Be(0);
    }

    [Fact]
    public async Task TasksStolen_counts_every_item_a_batch_steal_moves_not_just_the_steals()
    {
        // One worker (the spawner) fills its deque and then blocks until the deque's tasks have run; the other (held until
        // the deque is full) can only take them by stealing, half a deque at a time. Each item counts once, whether it was
        // the one a steal ran at once or one of the half it moved: exactly the deque's 10 items in all. No compensation:
        // with the spawner blocked, a thief held off its core for 100 ms after the gate opens (or a spawner preempted as
        // long among its spawns) is a standstill of both workers, and a compensation thread (which counts no steal) would
        // take deque items in its place.
        var scheduler = SchedulerTestHelpers.CreateWithoutCompensation(2);
        await using var disposeScheduler = SchedulerTestHelpers.DisposeWithin(scheduler);
        const int DequeItems = 10;
        using var thiefRunning = new ManualResetEventSlim();
        using var dequeFull = new ManualResetEventSlim();
        using var dequeRan = new CountdownEvent(DequeItems);

        Task thief = scheduler.Factory.StartNew(() =>
        {
            thiefRunning.Set();
            dequeFull.Wait(SchedulerTestHelpers.Timeout);
        });
        thiefRunning.Wait(SchedulerTestHelpers.Timeout).Should().BeTrue();

        bool allRan = false;
        Task spawner = scheduler.Factory.StartNew(() =>
        {
            for (int i = 0; i < DequeItems; i++)
            {
                Task.Factory.StartNew(() => dequeRan.Signal(), CancellationToken.None, TaskCreationOptions.None, scheduler);
            }

            // Displaces the last one into the deque and stays in this worker's private LIFO slot.
            Task.Factory.StartNew(() => { }, CancellationToken.None, TaskCreationOptions.None, scheduler);
            dequeFull.Set();
            allRan = dequeRan.Wait(SchedulerTestHelpers.Timeout);
        });

        await Task.WhenAll(thief, spawner).WithTimeout();
        allRan.Should().BeTrue("the idle worker steals the blocked worker's deque");
        scheduler.GetStatistics().TasksStolen.Should().Be(DequeItems);
    }

    [Fact]
    public async Task QueuedTasks_counts_waiting_work()
    {
        // No compensation: the only worker blocks on purpose, and a test thread held off its core for 100 ms between
        // queueing and reading the count would let a compensation thread run some of the queued tasks first.
        var scheduler = SchedulerTestHelpers.CreateWithoutCompensation(1);
        await using var disposeScheduler = SchedulerTestHelpers.DisposeWithin(scheduler);
        using var gate = new ManualResetEventSlim();
        using var running = new ManualResetEventSlim();

        // The blocker must have left the queue before the count is read: a fixed pause was not enough for a worker
        // that a loaded machine had not yet scheduled (the blocker then still counted as an eleventh queued task).
        Task blocker = scheduler.Factory.StartNew(() =>
        {
            running.Set();
            gate.Wait(SchedulerTestHelpers.Timeout);
        });
        running.Wait(SchedulerTestHelpers.Timeout).Should().BeTrue();
        Task[] queued = Enumerable.Range(0, 10).Select(_ => scheduler.Factory.StartNew(() => { })).ToArray();
        scheduler.GetStatistics().QueuedTasks.Should().Be(10);
        gate.Set();
        await Task.WhenAll(queued.Append(blocker)).WithTimeout();
    }

    [Fact]
    public async Task QueuedTasks_counts_the_task_waiting_in_a_workers_LIFO_slot()
    {
        // A task just spawned waits in its worker's LIFO slot, where no peer sees it; it is still queued work. Read on
        // the worker itself, right after the spawn. The watchdog may move it to the global queue meanwhile (where it
        // counts as well, but a snapshot can miss it in transit): only an attempt without a rescue counts.
        var scheduler = SchedulerTestHelpers.Create(1);
        await using var disposeScheduler = SchedulerTestHelpers.DisposeWithin(scheduler);
        int? queuedBesideSlotTask = null; // null: every attempt had a rescue
        for (int attempt = 0; attempt < 10 && queuedBesideSlotTask is null; attempt++)
        {
            long rescuesBefore = scheduler.LifoRescues;
            int queued = await scheduler.Factory.StartNew(() =>
            {
                Task.Factory.StartNew(() => { }, CancellationToken.None, TaskCreationOptions.None, scheduler);
                return scheduler.GetStatistics().QueuedTasks;
            }).WithTimeout();
            if (scheduler.LifoRescues == rescuesBefore)
            {
                queuedBesideSlotTask = queued;
            }
        }

        queuedBesideSlotTask.Should().Be(1, "the spawned task waits in the LIFO slot (null: the watchdog rescued it in every attempt)");
    }

    [Fact]
    public async Task Counters_are_published_through_the_Scheduler_meter()
    {
        var scheduler = new WorkStealingTaskScheduler(new WorkStealingTaskSchedulerOptions { WorkerCount = 1, ThreadNamePrefix = "MeterProbe" });
        await Task.WhenAll(Enumerable.Range(0, 10).Select(_ => scheduler.Factory.StartNew(() => { }))).WithTimeout();

        // A task's awaiters can resume before its worker counts it (the count follows the run).
        await SchedulerTestHelpers.WaitUntilAsync(() => scheduler.GetStatistics().TasksExecuted >= 10);

        // Measurements of this scheduler (docs/scheduling.md: tagged with scheduler.name and scheduler.id), by instrument.
        var seen = new Dictionary<string, long>();
        var shapes = new Dictionary<string, string>();
        using var listener = new MeterListener();
        listener.InstrumentPublished = (instrument, l) =>
        {
            if (instrument.Meter.Name == "Scheduler")
            {
                lock (shapes)
                {
                    shapes[instrument.Name] = $"{instrument.GetType().Name} {instrument.Unit}";
                }

                l.EnableMeasurementEvents(instrument);
            }
        };
        listener.SetMeasurementEventCallback<long>((instrument, value, tags, _) =>
        {
            string? name = null;
            int? id = null;
            foreach (var tag in tags)
            {
                if (tag.Key == "scheduler.name")
                {
                    name = (string?)tag.Value;
                }
                else if (tag.Key == "scheduler.id")
                {
                    id = (int?)tag.Value;
                }
            }

            if (name == "MeterProbe" && id == scheduler.Id)
            {
                seen[instrument.Name] = value;
            }
        });
        listener.Start();
        listener.RecordObservableInstruments();

        seen.Keys.Should().Contain(["scheduler.tasks.executed", "scheduler.tasks.stolen", "scheduler.tasks.inlined",
            "scheduler.worker.parks", "scheduler.worker.wakeups", "scheduler.tasks.queued"]);
        seen["scheduler.tasks.executed"].Should().BeGreaterThanOrEqualTo(10);

        // Kinds and units as docs/scheduling.md lists them (dashboards key on them).
        shapes.Should().BeEquivalentTo(new Dictionary<string, string>
        {
            ["scheduler.tasks.executed"] = "ObservableCounter`1 {task}",
            ["scheduler.tasks.stolen"] = "ObservableCounter`1 {task}",
            ["scheduler.tasks.inlined"] = "ObservableCounter`1 {task}",
            ["scheduler.worker.parks"] = "ObservableCounter`1 {park}",
            ["scheduler.worker.wakeups"] = "ObservableCounter`1 {wakeup}",
            ["scheduler.tasks.queued"] = "ObservableUpDownCounter`1 {task}",
        });

        // A disposed scheduler leaves the meter (the meter's registry would otherwise keep every scheduler ever created).
        await scheduler.DisposeAsync().AsTask().WithTimeout("The scheduler's DisposeAsync");
        seen.Clear();
        listener.RecordObservableInstruments();
        seen.Should().BeEmpty();
    }

    [Fact]
    public async Task Parks_and_wakeups_are_summed_over_every_worker()
    {
        // A parked worker has parked once more than it was woken, so with every worker parked the difference is the
        // worker count. Both workers park as soon as they start with nothing to do.
        static long ParkedBeyondWoken(SchedulerStatistics s) => s.WorkerParks - s.WorkerWakeups;
        var scheduler = SchedulerTestHelpers.CreateWithoutCompensation(2, spin: 0);
        await using var disposeScheduler = SchedulerTestHelpers.DisposeWithin(scheduler);
        await SchedulerTestHelpers.WaitUntilAsync(() => ParkedBeyondWoken(scheduler.GetStatistics()) == 2);
        ParkedBeyondWoken(scheduler.GetStatistics()).Should().Be(2, "both workers parked after they started");

        using (new WorkerBlockers(scheduler, 2))
        {
            // Both workers woke: each runs one blocker.
        }

        // Quiet again. Each worker has now parked at least twice, so counting one worker's wake-ups only (the other's
        // dropped from the sum) leaves the difference at 3 or more.
        await SchedulerTestHelpers.WaitUntilAsync(() => ParkedBeyondWoken(scheduler.GetStatistics()) == 2);
        SchedulerStatistics quiet = scheduler.GetStatistics();
        ParkedBeyondWoken(quiet).Should().Be(2, $"both workers are parked (parks {quiet.WorkerParks}, wakeups {quiet.WorkerWakeups})");
        quiet.WorkerWakeups.Should().BeGreaterThanOrEqualTo(2);
    }

    [Fact]
    public async Task Each_instrument_of_the_meter_reports_its_own_statistic()
    {
        // One worker and no compensation: nothing is stolen, and queued work stays queued while the worker is held.
        var scheduler = SchedulerTestHelpers.CreateWithoutCompensation(1, spin: 0);
        await using var disposeScheduler = SchedulerTestHelpers.DisposeWithin(scheduler);
        await scheduler.Factory.StartNew(() =>
        {
            for (int i = 0; i < 3; i++)
            {
                Task.Factory.StartNew(() => { }, CancellationToken.None, TaskCreationOptions.None, scheduler).Wait();
            }
        }).WithTimeout();
        await SchedulerTestHelpers.WaitUntilAsync(() => scheduler.GetStatistics().TasksInlined > 0);
        scheduler.GetStatistics().TasksInlined.Should().BePositive("the values must differ for a swap of two instruments to show");

        // Parked: one park more than wakeups.
        await SchedulerTestHelpers.WaitUntilAsync(() => scheduler.GetStatistics() is { WorkerParks: > 0 } s && s.WorkerParks > s.WorkerWakeups);
        await ExpectMeterToMatchStatistics(scheduler, "parked");

        // Held, with work queued behind it.
        Task[] queued;
        using (new WorkerBlockers(scheduler, 1))
        {
            queued = [.. Enumerable.Range(0, 3).Select(_ => scheduler.Factory.StartNew(() => { }))];
            scheduler.GetStatistics().QueuedTasks.Should().Be(3);
            await ExpectMeterToMatchStatistics(scheduler, "held");
        }

        await Task.WhenAll(queued).WithTimeout();
    }

    [Fact]
    public void The_meter_and_its_instruments_say_what_they_are()
    {
        var scheduler = SchedulerTestHelpers.Create(1);
        using var disposeScheduler = SchedulerTestHelpers.DisposeBoundedOnExit(scheduler);
        var described = new Dictionary<string, (string? Version, string? Description)>();
        using var listener = new MeterListener();
        listener.InstrumentPublished = (instrument, _) =>
        {
            if (instrument.Meter.Name == "Scheduler")
            {
                lock (described)
                {
                    described[instrument.Name] = (instrument.Meter.Version, instrument.Description);
                }
            }
        };
        listener.Start();

        described.Should().HaveCount(6);
        described.Values.Should().OnlyContain(d => d.Version == "1.0", "docs/scheduling.md gives the meter's version");
        described["scheduler.tasks.executed"].Description.Should().Be("Work items run by workers.");
        described["scheduler.tasks.stolen"].Description.Should().Be("Work items taken from another worker.");
        described["scheduler.tasks.inlined"].Description.Should().Be("Tasks run inline on a worker.");
        described["scheduler.worker.parks"].Description.Should().Be("Times a worker parked.");
        described["scheduler.worker.wakeups"].Description.Should().Be("Times a parked worker was woken.");
        described["scheduler.tasks.queued"].Description.Should().Be("Work items waiting in queues (approximate).");
    }

    /// <summary>Reads the meter while the statistics hold still (read before and after it) and compares instrument by instrument.</summary>
    private static async Task ExpectMeterToMatchStatistics(WorkStealingTaskScheduler scheduler, string when)
    {
        for (int attempt = 0; attempt < 200; attempt++)
        {
            SchedulerStatistics before = scheduler.GetStatistics();
            Dictionary<string, long> meter = ReadMeter(scheduler);
            if (scheduler.GetStatistics() == before)
            {
                meter.Should().Equal(
                    new Dictionary<string, long>
                    {
                        ["scheduler.tasks.executed"] = before.TasksExecuted,
                        ["scheduler.tasks.stolen"] = before.TasksStolen,
                        ["scheduler.tasks.inlined"] = before.TasksInlined,
                        ["scheduler.worker.parks"] = before.WorkerParks,
                        ["scheduler.worker.wakeups"] = before.WorkerWakeups,
                        ["scheduler.tasks.queued"] = before.QueuedTasks,
                    },
                    $"each instrument reports its own statistic ({when}: {before})");
                return;
            }

            await Task.Delay(10);
        }

        throw new TimeoutException($"The statistics never held still while the meter was read ({when}).");
    }

    private static Dictionary<string, long> ReadMeter(WorkStealingTaskScheduler scheduler)
    {
        var seen = new Dictionary<string, long>();
        using var listener = new MeterListener();
        listener.InstrumentPublished = (instrument, l) =>
        {
            if (instrument.Meter.Name == "Scheduler")
            {
                l.EnableMeasurementEvents(instrument);
            }
        };
        listener.SetMeasurementEventCallback<long>((instrument, value, tags, _) =>
        {
            foreach (var tag in tags)
            {
                if (tag.Key == "scheduler.id" && (int?)tag.Value == scheduler.Id)
                {
                    seen[instrument.Name] = value;
                }
            }
        });
        listener.Start();
        listener.RecordObservableInstruments();
        return seen;
    }
}
