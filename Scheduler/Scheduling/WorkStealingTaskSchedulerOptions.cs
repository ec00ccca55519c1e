namespace Scheduler;

/// <summary>Settings for a <see cref="WorkStealingTaskScheduler"/>. Validated when the scheduler is created.</summary>
public sealed class WorkStealingTaskSchedulerOptions
{
    /// <summary>The largest worker count accepted (the idle protocol packs counts into 16 bits).</summary>
    public const int MaxWorkerCount = 4096;

    /// <summary>
    /// Number of worker threads. Defaults to <see cref="Environment.ProcessorCount"/> (at most <see cref="MaxWorkerCount"/>,
    /// so that the default constructor and <see cref="WorkStealingTaskScheduler.Shared"/> work on any machine); must be 1
    /// to <see cref="MaxWorkerCount"/>.
    /// </summary>
    public int WorkerCount { get; set; } = Math.Min(Environment.ProcessorCount, MaxWorkerCount);

    /// <summary>Prefix of worker thread names (<c>{prefix} #0</c>, ...) and of dedicated <c>LongRunning</c> threads.</summary>
    public string ThreadNamePrefix { get; set; } = "WorkStealing";

    /// <summary>
    /// How many times an idle worker polls every queue (with a pause of about 0.2 µs between polls) before it parks.
    /// Higher values trade idle CPU for wake-up latency under bursty load. Defaults to 512 (about 100–120 µs; the
    /// ThreadPool's idle workers spin about 200–300 µs on the same machine); 0 parks at once.
    /// A worker that finds it was preempted while spinning (other threads want the CPUs) ends that spell and parks; when
    /// such cuts keep coming it skips spinning for 10 ms, doubling up to a second: under CPU contention a spinning worker
    /// waits for a time slice where a parked one is woken.
    /// </summary>
    public int SpinIterations { get; set; } = 512;

    /// <summary>
    /// Every this many tasks a worker serves its inbox and the global queue before its own deque, so
    /// outside producers are never starved by local work. Defaults to 61 (as tokio); must be positive.
    /// </summary>
    public int FairnessInterval { get; set; } = 61;

    /// <summary>
    /// How many tasks in a row may run from the LIFO slot (the task just spawned or woken by the running
    /// task) before older work gets a turn. Defaults to 3; 0 disables the LIFO slot; must not be negative.
    /// </summary>
    public int LifoSlotLimit { get; set; } = 3;

    /// <summary>
    /// Capacity of each worker's deque; a power of two from 16 to 1,048,576 (16 MB of slots per worker). Overflow spills
    /// half to the global queue. Defaults to 256.
    /// </summary>
    public int LocalQueueCapacity { get; set; } = 256;

    /// <summary>
    /// Opt-in: workers run with a scheduler-specific <see cref="SynchronizationContext"/>, so that <c>await</c> inside
    /// work on this scheduler resumes through it — one small allocation per asynchronous resumption instead of a
    /// continuation plus a <see cref="Task"/>, and no task machinery when the awaited task completes on a worker.
    /// Defaults to false.
    /// </summary>
    /// <remarks>
    /// The trade-off, measured and documented in <c>docs/scheduling.md</c>: when an awaited task completes on a worker
    /// of the same scheduler, the BCL runs the continuation inline with no current task, so the resumed code sees
    /// <see cref="TaskScheduler.Current"/> as <see cref="TaskScheduler.Default"/> (it still runs on the worker, and
    /// <c>await</c> and <c>Task.Yield</c> still come back here). Code that calls <c>Task.Factory.StartNew</c> or
    /// <c>Parallel.*</c> without naming a scheduler would then reach the ThreadPool. Leave it off unless all work names
    /// its scheduler explicitly. <see cref="SynchronizationContext.Current"/> is non-null on workers when it is on.
    /// </remarks>
    public bool UseSynchronizationContext { get; set; }

    /// <summary>
    /// How long every worker must have stood still (no item finished) while work is queued before a compensation thread
    /// starts to run that work: the way out when every worker blocks in a wait the runtime does not inline
    /// (<c>Wait(CancellationToken)</c>, <c>Wait(TimeSpan)</c>, <c>SemaphoreSlim.Wait</c>, a lock) on work that is still
    /// queued. With <em>n</em> compensation threads running, the next one needs (<em>n</em> + 1) delays of standstill.
    /// Defaults to 100 ms; the check runs every 10 ms, so a shorter delay acts as 10 ms.
    /// <see cref="Timeout.InfiniteTimeSpan"/> turns compensation off: the workers stay the only threads, and a program
    /// that blocks all of them on queued work hangs. Must be positive (at most <see cref="int.MaxValue"/> milliseconds)
    /// or infinite.
    /// </summary>
    public TimeSpan BlockingCompensationDelay { get; set; } = TimeSpan.FromMilliseconds(100);

    /// <summary>Whether workers are background threads (they do not keep the process alive). Defaults to true.</summary>
    public bool UseBackgroundThreads { get; set; } = true;

    /// <summary>
    /// Whether busy workers return to a preferred CPU of their own when the kernel moved them (Linux, schedulers with
    /// at least one worker per allowed CPU; see WorkStealingTaskScheduler.Placement.cs). On by default; off for A/B
    /// measurements and tests.
    /// </summary>
    internal bool SpreadOverCpus { get; set; } = true;

    /// <summary>For tests: runs in the constructor before worker <c>i</c>'s thread starts (a failure injected there fails the construction halfway).</summary>
    internal Action<WorkStealingTaskScheduler, int>? BeforeWorkerStartForTests { get; set; }

    internal void Validate()
    {
        if (WorkerCount < 1 || WorkerCount > MaxWorkerCount)
        {
            throw new ArgumentOutOfRangeException(nameof(WorkerCount), WorkerCount, $"The worker count must be between 1 and {MaxWorkerCount}.");
        }

        ArgumentNullException.ThrowIfNull(ThreadNamePrefix, nameof(ThreadNamePrefix));
        ArgumentOutOfRangeException.ThrowIfNegative(SpinIterations, nameof(SpinIterations));
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(FairnessInterval, nameof(FairnessInterval));
        ArgumentOutOfRangeException.ThrowIfNegative(LifoSlotLimit, nameof(LifoSlotLimit));
        if (BlockingCompensationDelay != Timeout.InfiniteTimeSpan
            && (BlockingCompensationDelay <= TimeSpan.Zero || BlockingCompensationDelay.TotalMilliseconds > int.MaxValue))
        {
            throw new ArgumentOutOfRangeException(nameof(BlockingCompensationDelay), BlockingCompensationDelay, "The blocking compensation delay must be positive (at most int.MaxValue milliseconds) or Timeout.InfiniteTimeSpan to turn compensation off.");
        }

        if (LocalQueueCapacity < 16 || LocalQueueCapacity > MaxLocalQueueCapacity || (LocalQueueCapacity & (LocalQueueCapacity - 1)) != 0)
        {
            // Bounded above too: a huge capacity failed with OutOfMemoryException (a slot array per worker) instead of
            // naming the option.
            throw new ArgumentOutOfRangeException(nameof(LocalQueueCapacity), LocalQueueCapacity, "The local queue capacity must be a power of two from 16 to 1,048,576.");
        }
    }

    private const int MaxLocalQueueCapacity = 1 << 20;

    internal WorkStealingTaskSchedulerOptions Clone() => (WorkStealingTaskSchedulerOptions)MemberwiseClone();
}
