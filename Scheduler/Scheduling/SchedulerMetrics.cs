using System.Collections.Concurrent;
using System.Diagnostics.Metrics;

namespace Scheduler;

/// <summary>
/// Publishes every live scheduler's counters as a <see cref="Meter"/> named <c>Scheduler</c>, so
/// <c>dotnet-counters monitor --counters Scheduler</c> can watch a running process. The instruments are
/// observable: nothing is recorded on the hot path, the counters are read when a listener collects.
/// </summary>
internal static class SchedulerMetrics
{
    public const string MeterName = "Scheduler";

    private static readonly ConcurrentDictionary<WorkStealingTaskScheduler, byte> s_schedulers = new();
    private static readonly Meter s_meter = new(MeterName, "1.0");

    static SchedulerMetrics()
    {
        s_meter.CreateObservableCounter("scheduler.tasks.executed", () => Observe(s => s.TasksExecuted), "{task}", "Work items run by workers.");
        s_meter.CreateObservableCounter("scheduler.tasks.stolen", () => Observe(s => s.TasksStolen), "{task}", "Work items taken from another worker.");
        s_meter.CreateObservableCounter("scheduler.tasks.inlined", () => Observe(s => s.TasksInlined), "{task}", "Tasks run inline on a worker.");
        s_meter.CreateObservableCounter("scheduler.worker.parks", () => Observe(s => s.WorkerParks), "{park}", "Times a worker parked.");
        s_meter.CreateObservableCounter("scheduler.worker.wakeups", () => Observe(s => s.WorkerWakeups), "{wakeup}", "Times a parked worker was woken.");
        s_meter.CreateObservableUpDownCounter("scheduler.tasks.queued", () => Observe(s => (long)s.QueuedTasks), "{task}", "Work items waiting in queues (approximate).");
    }

    public static void Register(WorkStealingTaskScheduler scheduler) => s_schedulers.TryAdd(scheduler, 0);

    public static void Unregister(WorkStealingTaskScheduler scheduler) => s_schedulers.TryRemove(scheduler, out _);

    private static List<Measurement<long>> Observe(Func<SchedulerStatistics, long> select)
    {
        var measurements = new List<Measurement<long>>(s_schedulers.Count);
        foreach (WorkStealingTaskScheduler scheduler in s_schedulers.Keys)
        {
            measurements.Add(new Measurement<long>(
                select(scheduler.GetStatistics()),
                new KeyValuePair<string, object?>("scheduler.name", scheduler.Options.ThreadNamePrefix),
                new KeyValuePair<string, object?>("scheduler.id", scheduler.Id)));
        }

        return measurements;
    }
}
