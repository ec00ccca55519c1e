using System.Diagnostics.Metrics;

namespace Scheduler.Tests.Scheduling;

public sealed class StatisticsTests
{
    [Fact]
    public async Task Counters_track_executed_stolen_inlined_parks_and_wakeups()
    {
        using var scheduler = SchedulerTestHelpers.Create(2, spin: 0);
        await scheduler.Factory.StartNew(() => { }).WithTimeout();
        await Task.Delay(50); // let both workers park

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

    [Fact]
    public async Task QueuedTasks_counts_waiting_work()
    {
        using var scheduler = SchedulerTestHelpers.Create(1);
        using var gate = new ManualResetEventSlim();
        Task blocker = scheduler.Factory.StartNew(() => gate.Wait(SchedulerTestHelpers.Timeout));
        await Task.Delay(20);
        Task[] queued = Enumerable.Range(0, 10).Select(_ => scheduler.Factory.StartNew(() => { })).ToArray();
        scheduler.GetStatistics().QueuedTasks.Should().Be(10);
        gate.Set();
        await Task.WhenAll(queued.Append(blocker)).WithTimeout();
    }

    [Fact]
    public async Task Counters_are_published_through_the_Scheduler_meter()
    {
        using var scheduler = new WorkStealingTaskScheduler(new WorkStealingTaskSchedulerOptions { WorkerCount = 1, ThreadNamePrefix = "MeterProbe" });
        await Task.WhenAll(Enumerable.Range(0, 10).Select(_ => scheduler.Factory.StartNew(() => { }))).WithTimeout();

        // A task's awaiters can resume before its worker counts it (the count follows the run).
        await SchedulerTestHelpers.WaitUntilAsync(() => scheduler.GetStatistics().TasksExecuted >= 10);

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
                if (tag.Key == "scheduler.name" && (string?)tag.Value == "MeterProbe")
                {
                    seen[instrument.Name] = value;
                }
            }
        });
        listener.Start();
        listener.RecordObservableInstruments();

        seen.Keys.Should().Contain(["scheduler.tasks.executed", "scheduler.tasks.stolen", "scheduler.tasks.inlined",
            "scheduler.worker.parks", "scheduler.worker.wakeups", "scheduler.tasks.queued"]);
        seen["scheduler.tasks.executed"].Should().BeGreaterThanOrEqualTo(10);
    }
}
