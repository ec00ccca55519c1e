using System.Collections.Concurrent;
using System.IO.Pipelines;
using System.Runtime.CompilerServices;

namespace Scheduler;

/// <summary>
/// A <see cref="TaskScheduler"/> with a fixed set of workers (one per core by default), a bounded
/// work-stealing deque per worker, a global queue for outside producers, a per-worker inbox for targeted
/// wake-ups, and idle workers that spin briefly and then park (no CPU while idle).
/// </summary>
/// <remarks>
/// Use it through <see cref="Factory"/>, <c>Task.Factory.StartNew(..., scheduler)</c>, <c>Parallel.*</c> with
/// <see cref="ParallelOptions.TaskScheduler"/>, TPL Dataflow's <c>TaskScheduler</c> option, or
/// <see cref="PipeScheduler"/>. Code running on a worker sees this scheduler as <see cref="TaskScheduler.Current"/>,
/// so <c>await</c> resumes here. See <c>docs/scheduling.md</c> for the queues and the park/wake protocol.
/// </remarks>
public sealed partial class WorkStealingTaskScheduler : TaskScheduler, IDisposable, IAsyncDisposable
{
    private static readonly Lazy<WorkStealingTaskScheduler> s_shared = new(
        () => new WorkStealingTaskScheduler(new WorkStealingTaskSchedulerOptions { ThreadNamePrefix = "WorkStealing.Shared" }, isShared: true),
        LazyThreadSafetyMode.ExecutionAndPublication);

    // The worker the current thread belongs to, of whichever scheduler. Always compare its Owner with `this`.
    [ThreadStatic]
    private static Worker? t_currentWorker;

    private readonly Worker[] _workers;
    private readonly ConcurrentQueue<WorkItem> _globalQueue = new();
    private readonly WorkStealingTaskSchedulerOptions _options;
    private readonly bool _isShared;

    /// <summary>Creates a scheduler with <see cref="Environment.ProcessorCount"/> workers (at most <see cref="WorkStealingTaskSchedulerOptions.MaxWorkerCount"/>).</summary>
    public WorkStealingTaskScheduler()
        : this(new WorkStealingTaskSchedulerOptions())
    {
    }

    /// <summary>Creates a scheduler with <paramref name="workerCount"/> workers.</summary>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="workerCount"/> is less than 1 or more than <see cref="WorkStealingTaskSchedulerOptions.MaxWorkerCount"/>.</exception>
    public WorkStealingTaskScheduler(int workerCount)
        : this(CreateOptions(workerCount))
    {
    }

    /// <summary>Creates a scheduler with the given options (copied; later changes to them have no effect).</summary>
    /// <exception cref="ArgumentNullException"><paramref name="options"/> is null.</exception>
    /// <exception cref="ArgumentOutOfRangeException">An option is out of its range.</exception>
    public WorkStealingTaskScheduler(WorkStealingTaskSchedulerOptions options)
        : this(options, isShared: false)
    {
    }

    private WorkStealingTaskScheduler(WorkStealingTaskSchedulerOptions options, bool isShared)
    {
        ArgumentNullException.ThrowIfNull(options);
        _options = options.Clone();
        _options.Validate();
        _isShared = isShared;

        WorkerCount = _options.WorkerCount;
        _idle = new IdleCoordinator(WorkerCount);
        _workers = new Worker[WorkerCount];
        for (int i = 0; i < _workers.Length; i++)
        {
            _workers[i] = new Worker(this, i);
        }

        _liveWorkers = WorkerCount;
        Factory = new TaskFactory(CancellationToken.None, TaskCreationOptions.None, TaskContinuationOptions.None, this);
        PipeScheduler = new WorkStealingPipeScheduler(this);
        WorkerContext = _options.UseSynchronizationContext ? new WorkStealingSynchronizationContext(this) : null;

        int started = 0;
        try
        {
            AssignPreferredCpus();
            for (; started < _workers.Length; started++)
            {
                _options.BeforeWorkerStartForTests?.Invoke(this, started);
                _workers[started].Start(_options.UseBackgroundThreads || isShared);
            }

            StartWatchdog();
            SchedulerMetrics.Register(this);
        }
        catch
        {
            AbandonConstruction(started);
            throw;
        }
    }

    /// <summary>
    /// The constructor failed after <paramref name="started"/> workers started (the OS refused a thread: an
    /// <see cref="OutOfMemoryException"/>). Nobody can dispose a scheduler they never got: shut it down here, or the
    /// started workers stay parked for good (a foreground one keeps the process alive). The workers that never started
    /// count as exited, or the started ones would wait for them as busy peers and the last exit would never come.
    /// </summary>
    private void AbandonConstruction(int started)
    {
        for (int i = started; i < _workers.Length; i++)
        {
            _workers[i].MarkNeverStarted();
        }

        Volatile.Write(ref _disposeRequested, 1);
        SchedulerMetrics.Unregister(this);
        for (int i = started; i < _workers.Length; i++)
        {
            OnWorkerExited();
        }

        _idle.WakeAll();
        for (int i = 0; i < started; i++)
        {
            _workers[i].Thread?.Join();
        }
    }

    /// <summary>A process-wide scheduler with <see cref="Environment.ProcessorCount"/> background workers, created on first use and never disposed.</summary>
    public static WorkStealingTaskScheduler Shared => s_shared.Value;

    /// <summary>The number of workers; tasks never run on more threads at once (LongRunning tasks aside).</summary>
    public override int MaximumConcurrencyLevel => WorkerCount;

    /// <summary>The number of worker threads.</summary>
    public int WorkerCount { get; }

    /// <summary>A <see cref="TaskFactory"/> whose <c>StartNew</c> and <c>ContinueWith</c> run on this scheduler.</summary>
    public TaskFactory Factory { get; }

    /// <summary>A <see cref="System.IO.Pipelines.PipeScheduler"/> that runs pipe callbacks on this scheduler, with no allocation per <c>Schedule</c>.</summary>
    public PipeScheduler PipeScheduler { get; }

    /// <summary>True when the calling thread is one of this scheduler's workers.</summary>
    public bool IsWorkerThread => t_currentWorker?.Owner == this;

    internal WorkStealingTaskSchedulerOptions Options => _options;

    /// <summary>The context installed on workers, or null when <see cref="WorkStealingTaskSchedulerOptions.UseSynchronizationContext"/> is off.</summary>
    internal WorkStealingSynchronizationContext? WorkerContext { get; }

    /// <summary>The worker running on the calling thread when it belongs to this scheduler, else null.</summary>
    internal Worker? CurrentWorker
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        get
        {
            Worker? worker = t_currentWorker;
            return worker is not null && worker.Owner == this ? worker : null;
        }
    }

    /// <summary>The worker index of the calling thread when it is one of this scheduler's workers.</summary>
    internal bool TryGetCurrentWorkerIndex(out int workerIndex)
    {
        Worker? worker = CurrentWorker;
        workerIndex = worker?.Index ?? -1;
        return worker is not null;
    }

    /// <summary>Whether worker <paramref name="workerIndex"/> has run out of work (spinning or parked). For tests.</summary>
    internal bool IsWorkerIdle(int workerIndex) => _workers[workerIndex].IsIdle;

    /// <summary>The workers' threads (null for a worker whose thread never started). For tests.</summary>
    internal Thread?[] WorkerThreads => [.. _workers.Select(w => w.Thread)];

    /// <summary>Whether worker <paramref name="workerIndex"/> sleeps in the kernel until woken. For tests.</summary>
    internal bool IsWorkerParked(int workerIndex) => _workers[workerIndex].IsParked;

    /// <summary>The scheduler whose worker runs on the calling thread, if any.</summary>
    internal static WorkStealingTaskScheduler? CurrentWorkerScheduler => t_currentWorker?.Owner;

    /// <inheritdoc />
    protected override void QueueTask(Task task)
    {
        ArgumentNullException.ThrowIfNull(task);

        try
        {
            Worker? worker = CurrentWorker;
            if ((task.CreationOptions & TaskCreationOptions.LongRunning) != 0)
            {
                if (worker is null)
                {
                    ThrowIfRefusedAfterDispose(task);
                }

                StartLongRunning(task);
                return;
            }

            if (worker is null)
            {
                // Outside producers stop at Dispose (the TPL wraps the refusal in a TaskSchedulerException); work of this
                // scheduler running elsewhere and await resumptions do not (see ThrowIfRefusedAfterDispose). After the
                // workers exited, what is accepted runs on the ThreadPool, like every late arrival.
                ThrowIfRefusedAfterDispose(task);
                EnqueueGlobal(WorkItem.ForTask(task));
            }
            else if ((task.CreationOptions & TaskCreationOptions.PreferFairness) != 0)
            {
                // Task.Yield and fairness-minded callers go to the back of a FIFO line, or yield loops starve others:
                // this worker's inbox, which it serves after its local work (and peers drain while it is busy).
                worker.PostToInbox(WorkItem.ForTask(task));
            }
            else
            {
                worker.PushLocal(WorkItem.ForTask(task));
            }
        }
        catch (OutOfMemoryException) when (IsAwaitResumption(task))
        {
            RunAwaitResumptionNotQueued(task);
        }
    }

    /// <summary>
    /// A push of an await resumption ran out of memory (a queue segment, an overflow batch), with the task queued nowhere.
    /// Any other task's caller sees the exception; this one's would not: the TPL swallows it (the wrapper task just faults)
    /// and the awaiting method would stay suspended for good. So it runs now: inline on a worker (as a wait inlines), or,
    /// from any other thread, on the ThreadPool (or on this thread, if the ThreadPool cannot take it either).
    /// </summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    private void RunAwaitResumptionNotQueued(Task task)
    {
        if (CurrentWorker is { } worker)
        {
            // Counted as a wait's inline run is: not by the loop (Executed), yet progress the rescue watchdog must see.
            if (TryExecuteTask(task))
            {
                worker.Counters.Inlined++;
            }
        }
        else
        {
            RunOnThreadPool(WorkItem.ForTask(task));
        }
    }

    /// <summary>
    /// After <see cref="Dispose"/>, refuses <paramref name="task"/> when it comes from outside this scheduler's work. Not
    /// refused: work queued by a task of this scheduler (<see cref="TaskScheduler.Current"/> is this scheduler) that runs
    /// on a thread that is no worker — a LongRunning task on its dedicated thread, a task run on the ThreadPool after the
    /// workers exited — and await resumptions (see <see cref="IsAwaitResumption"/>). Such a task's <c>await
    /// Task.Yield()</c> queues its continuation here with <c>StartNew</c>: refused, the async method builder rethrows the
    /// refusal on the ThreadPool (the process ends) and the method never resumes.
    /// </summary>
    private void ThrowIfRefusedAfterDispose(Task task)
    {
        if (IsDisposeRequested && !IsAwaitResumption(task) && !IsContinuationTask(task) && TaskScheduler.Current != this && !IsCompensationThread)
        {
            ThrowDisposedForOutsideProducer();
        }
    }

    /// <summary>
    /// Whether <paramref name="task"/> is a continuation the runtime made for <c>ContinueWith</c> (or
    /// <c>ContinueWhenAll</c>/<c>ContinueWhenAny</c>): one of its own subclasses of <see cref="Task"/>, never the
    /// <see cref="Task"/> or <see cref="Task{TResult}"/> a <c>StartNew</c> makes.
    /// </summary>
    /// <remarks>
    /// A continuation registered before <see cref="Dispose"/> is queued when its antecedent completes, perhaps after:
    /// refused then, it faulted with the refusal and the work the user handed over while the scheduler still accepted
    /// it never ran (found by AdversarialSchedulerApiTests). Such a task runs (on the workers while they drain, else on
    /// the ThreadPool), as an await resumption does; a <c>ContinueWith</c> first made after <see cref="Dispose"/> runs
    /// too rather than faults. Only <c>StartNew</c> from outside is refused, as the contract says.
    /// </remarks>
    private static bool IsContinuationTask(Task task)
    {
        Type type = task.GetType();
        return type != typeof(Task)
            && type.Assembly == typeof(Task).Assembly
            && !(type.IsGenericType && type.GetGenericTypeDefinition() == typeof(Task<>));
    }

    /// <summary>
    /// Whether <paramref name="task"/> is the runtime's wrapper for an <c>await</c> resuming under this scheduler (the
    /// awaited task or value task completed on a thread that is not one of our workers: a timer, I/O, another scheduler).
    /// </summary>
    /// <remarks>
    /// <para>Two shapes. An awaited <see cref="Task"/> resumes through a plain <see cref="Task"/> without options whose
    /// state is the continuation <see cref="Action"/>, queued through <see cref="QueueTask"/>; the runtime swallows a
    /// refusal (the task merely faults), so the awaiting method would never resume and whoever waits for it would hang.
    /// An awaited <see cref="ValueTask"/> backed by an <see cref="System.Threading.Tasks.Sources.IValueTaskSource"/> of
    /// the BCL's making (<see cref="System.Threading.Tasks.Sources.ManualResetValueTaskSourceCore{TResult}"/>, channels,
    /// sockets, and sources modelled on them) resumes through
    /// <c>Task.Factory.StartNew(continuation, state, CancellationToken.None, TaskCreationOptions.DenyChildAttach, scheduler)</c>:
    /// a plain <see cref="Task"/> whose only option is <see cref="TaskCreationOptions.DenyChildAttach"/>. Refused, that one
    /// throws into whoever completed the source — a channel writer, an I/O or timer thread — and the method never resumes
    /// (found by AdversarialSchedulerTests: a channel write after Dispose threw the scheduler's refusal).</para>
    /// <para>A user's <c>StartNew</c> has the first shape only when it passes an <see cref="Action"/> as the state of an
    /// <see cref="Action{T}"/>, the second when it asks for exactly <see cref="TaskCreationOptions.DenyChildAttach"/>;
    /// after <see cref="Dispose"/> such a task runs (on the workers while they drain, else on the ThreadPool) rather than
    /// throws.</para>
    /// </remarks>
    private static bool IsAwaitResumption(Task task) =>
        task.GetType() == typeof(Task)
        && (task.CreationOptions == TaskCreationOptions.DenyChildAttach
            || (task.CreationOptions == TaskCreationOptions.None && task.AsyncState is Action));

    /// <inheritdoc />
    protected override bool TryExecuteTaskInline(Task task, bool taskWasPreviouslyQueued)
    {
        Worker? worker = CurrentWorker;
        if (worker is null)
        {
            // Never run our tasks on a foreign thread: it would break IsWorkerThread and TaskScheduler.Current. A
            // compensation thread's own carrier is the one exception (see WorkStealingTaskScheduler.Compensation.cs).
            return IsCompensationCarrier(task) && TryExecuteTask(task);
        }

        if (worker.IsCarrier(task))
        {
            return TryExecuteTask(task); // the worker loop itself starting up (see Worker.Run)
        }

        if (taskWasPreviouslyQueued)
        {
            if ((task.CreationOptions & TaskCreationOptions.LongRunning) != 0)
            {
                // Queued to its dedicated thread, which runs it (the ThreadPool's scheduler refuses the same): inlined on
                // a worker waiting for it, it would run on that worker, where it sees itself on one (IsWorkerThread).
                return false;
            }

            // Take it out of our own queue when it is there (the usual fork-join case). When another queue
            // holds it, running it here is still safe: a task executes at most once, and the stale entry is
            // skipped when dequeued. That is what keeps blocking fork-join from deadlocking one worker.
            worker.TryRemoveLocal(task);
        }

        if (!TryExecuteTask(task))
        {
            return false;
        }

        worker.Counters.Inlined++;
        return true;
    }

    /// <inheritdoc />
    protected override IEnumerable<Task> GetScheduledTasks()
    {
        // For debuggers, with threads frozen: no locks, best effort, never null.
        var targets = new List<object>();
        foreach (WorkItem item in _globalQueue)
        {
            if (item.Target is WorkItemBatch batch)
            {
                batch.CopyTargetsTo(targets);
            }
            else if (item.Target is not null)
            {
                targets.Add(item.Target);
            }
        }

        foreach (Worker worker in _workers)
        {
            worker.CopyQueuedTargetsTo(targets);
        }

        var tasks = new List<Task>(targets.Count);
        foreach (object target in targets)
        {
            if (target is Task task)
            {
                tasks.Add(task);
            }
        }

        return tasks;
    }

    /// <summary>Queues a work item: to the calling worker's deque when on a worker of this scheduler, else to the global queue.</summary>
    internal void Enqueue(in WorkItem item)
    {
        Worker? worker = CurrentWorker;
        if (worker is not null)
        {
            worker.PushLocal(item);
        }
        else
        {
            EnqueueGlobal(item);
        }
    }

    /// <summary>Queues a pooled work item (a waker) to the calling worker, or to the global queue from elsewhere. Never throws for disposal: work in flight is never dropped.</summary>
    internal void Enqueue(IThreadPoolWorkItem workItem) => Enqueue(WorkItem.ForThreadPoolWorkItem(workItem));

    /// <summary>
    /// Queues <paramref name="workItem"/> to a specific worker: into its LIFO slot when called on that worker,
    /// otherwise into its inbox, unparking it if it sleeps. Any thread may call this; it does not allocate.
    /// </summary>
    internal void EnqueueToWorker(int workerIndex, IThreadPoolWorkItem workItem)
    {
        ArgumentNullException.ThrowIfNull(workItem);
        Worker target = _workers[workerIndex];
        var item = WorkItem.ForThreadPoolWorkItem(workItem);
        if (t_currentWorker == target)
        {
            target.PushLocal(item);
        }
        else
        {
            target.PostToInbox(item);
        }
    }

    /// <summary>
    /// Queues a <see cref="System.Threading.SynchronizationContext.Post"/>: FIFO, to the calling worker's inbox or
    /// the global queue. Posts never throw for disposal: they are continuations of work already in flight.
    /// </summary>
    internal void EnqueuePosted(in WorkItem item)
    {
        Worker? worker = CurrentWorker;
        if (worker is not null)
        {
            worker.PostToInbox(item);
        }
        else
        {
            EnqueueGlobal(item);
        }
    }

    internal void EnqueueGlobal(in WorkItem item)
    {
        AddToGlobalQueue(item);
        OnGlobalEnqueued();
    }

    /// <summary>The global enqueue alone: out of memory (a new segment) throws with nothing queued.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private void AddToGlobalQueue(in WorkItem item)
    {
        Native.FaultInjection.ThrowIfOutOfMemoryInjected("global-enqueue"); // where the queue may allocate a segment

        _globalQueue.Enqueue(item); // interlocked: the full fence the wake protocol needs before reading idle state
    }

    /// <summary>What follows a global enqueue: the late drain after termination, or a wake-up.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private void OnGlobalEnqueued()
    {
        if (IsTerminated)
        {
            DrainToThreadPool();
            return;
        }

        NotifyParked();
    }

    internal bool TryDequeueGlobal(out WorkItem item) => _globalQueue.TryDequeue(out item);


    private void StartLongRunning(Task task)
    {
        // A dedicated thread: a long-running task must never hold a worker (the pool has no spare ones).
        var thread = new Thread(static state =>
        {
            var (scheduler, longTask) = ((WorkStealingTaskScheduler, Task))state!;
            scheduler.TryExecuteTask(longTask);
        })
        {
            IsBackground = true,
            Name = _options.ThreadNamePrefix + " LongRunning",
        };
        thread.UnsafeStart((this, task));
    }

    /// <summary>The options of <see cref="WorkStealingTaskScheduler(int)"/>. Internal for a test of the range's upper end, which a scheduler would need 4,096 threads to show.</summary>
    internal static WorkStealingTaskSchedulerOptions CreateOptions(int workerCount)
    {
        if (workerCount < 1 || workerCount > WorkStealingTaskSchedulerOptions.MaxWorkerCount)
        {
            throw new ArgumentOutOfRangeException(nameof(workerCount), workerCount, $"The worker count must be between 1 and {WorkStealingTaskSchedulerOptions.MaxWorkerCount}.");
        }

        return new WorkStealingTaskSchedulerOptions { WorkerCount = workerCount };
    }

    internal static void SetCurrentWorker(Worker? worker) => t_currentWorker = worker;

    /// <summary>
    /// After an item on a worker or compensation thread: puts back the loop's own execution context and the scheduler's
    /// synchronization context if the item left others (see Worker.Execute). Two thread-local reads when nothing changed.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal void RestoreLoopContexts(ExecutionContext loopContext)
    {
        if (ExecutionContext.Capture() != loopContext)
        {
            ExecutionContext.Restore(loopContext);
        }

        if (SynchronizationContext.Current != WorkerContext)
        {
            SynchronizationContext.SetSynchronizationContext(WorkerContext);
        }
    }

    internal bool RunWorkItem(in WorkItem item)
    {
        // The tagged kinds first (a compare each, no cast helper), then the untagged ones.
        if (item.AsTask is { } task)
        {
            return TryExecuteTask(task);
        }

        if (item.AsThreadPoolWorkItem is { } pooled)
        {
            pooled.Execute();
            return true;
        }

        switch (item.Target)
        {
            case Action<object?> action:
                action(item.State);
                return true;
            case SendOrPostCallback callback:
                callback(item.State);
                return true;
            case Task untaggedTask:
                return TryExecuteTask(untaggedTask);
            case IThreadPoolWorkItem untaggedWorkItem:
                untaggedWorkItem.Execute();
                return true;
            default:
                return false;
        }
    }
}
