using System.Diagnostics;

namespace Scheduler.Benchmarks.Compare;

/// <summary>What every measurement can use: the scheduler instances of the run, the mode, and a bounded wait.</summary>
internal sealed class CompareContext : IDisposable
{
    private readonly Lazy<WorkStealingTaskScheduler> _scheduler;
    private readonly bool _ownsScheduler;
    private WorkStealingTaskScheduler? _synchronizationContextScheduler;

    /// <summary>A context around <paramref name="scheduler"/>, which stays the caller's to dispose.</summary>
    public CompareContext(WorkStealingTaskScheduler scheduler, bool quick, TimeSpan runTimeout)
    {
        ArgumentNullException.ThrowIfNull(scheduler);
        _scheduler = new Lazy<WorkStealingTaskScheduler>(scheduler);
        Quick = quick;
        RunTimeout = runTimeout;
    }

    /// <summary>
    /// A context that creates its scheduler (ProcessorCount workers) on first use and disposes it with itself. A workload
    /// that never asks for it has none in its process: idle workers are not free there, since every garbage collection
    /// suspends each thread and walks its stack (a parked worker's stack is 16 frames deep, about 10 µs per collection per
    /// worker on the 2-core VM), which is a cost the timer rows' contenders would otherwise share without using it.
    /// </summary>
    public CompareContext(bool quick, TimeSpan runTimeout)
    {
        _scheduler = new Lazy<WorkStealingTaskScheduler>(static () => new WorkStealingTaskScheduler(), LazyThreadSafetyMode.ExecutionAndPublication);
        _ownsScheduler = true;
        Quick = quick;
        RunTimeout = runTimeout;
    }

    /// <summary>Our scheduler: one instance per run (ProcessorCount workers), reused by every round, disposed at the end.</summary>
    public WorkStealingTaskScheduler Scheduler => _scheduler.Value;

    /// <summary>Whether <see cref="Scheduler"/> has been created (a context given its scheduler always has one).</summary>
    public bool HasScheduler => _scheduler.IsValueCreated;

    /// <summary>Our scheduler's counters so far; all zero while no workload has asked for the scheduler (reading them does not create it).</summary>
    public SchedulerStatistics SchedulerStatistics => HasScheduler ? _scheduler.Value.GetStatistics() : default;

    /// <summary>
    /// A second scheduler of ours with <see cref="WorkStealingTaskSchedulerOptions.UseSynchronizationContext"/> on (created
    /// on first use; its workers park while other rows run): the opt-in way around the BCL's Task per await resumption.
    /// </summary>
    public WorkStealingTaskScheduler SynchronizationContextScheduler =>
        _synchronizationContextScheduler ??= new WorkStealingTaskScheduler(new WorkStealingTaskSchedulerOptions
        {
            UseSynchronizationContext = true,
            ThreadNamePrefix = "WorkStealing.SyncContext",
        });

    /// <summary>True under <c>--quick</c>: fewer rounds (probes may also shorten their windows).</summary>
    public bool Quick { get; }

    /// <summary>Longest a single run may take before the comparison fails instead of hanging the command.</summary>
    public TimeSpan RunTimeout { get; }

    /// <summary>Blocks until <paramref name="task"/> finishes (rethrowing its failure) or the run timeout passes.</summary>
    public void Wait(Task task, string what)
    {
        ArgumentNullException.ThrowIfNull(task);
        if (!task.Wait(RunTimeout))
        {
            throw new TimeoutException($"{what} did not finish within {RunTimeout.TotalSeconds:F0} s.");
        }
    }

    /// <summary>Blocks for the result of <paramref name="task"/> with the run timeout.</summary>
    public T Wait<T>(Task<T> task, string what)
    {
        Wait((Task)task, what);
        return task.Result;
    }

    /// <summary>A <see cref="MeasureRound"/> that times one run of <paramref name="start"/> in milliseconds.</summary>
    public static MeasureRound Timed(string what, Func<Task> start)
    {
        ArgumentNullException.ThrowIfNull(start);
        return context =>
        {
            long begin = Stopwatch.GetTimestamp();
            context.Wait(start(), what);
            return [Stopwatch.GetElapsedTime(begin).TotalMilliseconds];
        };
    }

    /// <summary>
    /// A <see cref="MeasureRound"/> for <see cref="Metric.Time"/> plus an allocation metric: the run's milliseconds and the
    /// managed bytes allocated per operation (<paramref name="operations"/> per run). Bytes are counted process-wide with
    /// <see cref="GC.GetTotalAllocatedBytes(bool)"/> (precise), so allocations on any thread, and the run's own setup, count.
    /// </summary>
    public static MeasureRound TimedWithAllocations(string what, Func<Task> start, int operations)
    {
        ArgumentNullException.ThrowIfNull(start);
        ArgumentOutOfRangeException.ThrowIfLessThan(operations, 1);
        return context =>
        {
            long bytesBefore = GC.GetTotalAllocatedBytes(precise: true);
            long begin = Stopwatch.GetTimestamp();
            context.Wait(start(), what);
            double milliseconds = Stopwatch.GetElapsedTime(begin).TotalMilliseconds;
            long bytes = GC.GetTotalAllocatedBytes(precise: true) - bytesBefore;
            return [milliseconds, (double)bytes / operations];
        };
    }

    /// <summary>Disposes the second scheduler if it was created, and the first if this context created it.</summary>
    public void Dispose()
    {
        _synchronizationContextScheduler?.Dispose();
        if (_ownsScheduler && HasScheduler)
        {
            _scheduler.Value.Dispose();
        }
    }
}
