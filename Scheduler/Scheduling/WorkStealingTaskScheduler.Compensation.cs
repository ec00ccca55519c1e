namespace Scheduler;

// Blocking compensation. A fixed set of workers deadlocks where the ThreadPool survives by adding threads: once every
// worker blocks in a wait that the BCL does not inline (Wait(TimeSpan), Wait(CancellationToken), WaitAll/WaitAny, a
// WhenAll(...).Wait(), SemaphoreSlim.Wait, a lock) — or in a Wait() whose inlined task then waits for its attached
// children — the work that would release them is queued and nobody can run it. Found by adversarial tests
// (AdversarialBlockingTests): two workers each joining two no-op children with Wait(token) hung for good.
//
// The watchdog already looks at every busy worker each period. When all of them have made no progress for
// BlockingCompensationDelay (an option, 100 ms by default) while work is queued (and any compensation thread already running made none either), it starts one
// compensation thread: a plain thread that takes queued work from outside the workers — the global queue, the deques'
// stealable ends, a busy worker's inbox — and runs it, until it finds none, then exits. One more starts after every
// further stretch of total standstill, each one delay longer than the last (n running: (n + 1) delays), up to a cap. The cost is nothing on the hot path (the check rides on the watchdog's
// tick, which is armed only while some worker is busy), and a delay before a deadlocked program moves on: work that is
// merely slow (long computations on every worker) gets a compensation thread too, after the same delay, as the
// ThreadPool's starvation injection does.
//
// A compensation thread is not a worker: IsWorkerThread is false there and it inlines no task (a Wait there blocks it,
// and another one comes). It runs its loop inside a carrier task of this scheduler, as a worker does, so what it runs
// sees this scheduler as TaskScheduler.Current and an `await` in it comes back to this scheduler.
public sealed partial class WorkStealingTaskScheduler
{
    [ThreadStatic]
    private static Task? t_compensationCarrier;

    [ThreadStatic]
    private static WorkStealingTaskScheduler? t_compensating;

    /// <summary>True on a compensation thread of this scheduler: it counts as one of its own threads for Dispose and intake.</summary>
    internal bool IsCompensationThread => ReferenceEquals(t_compensating, this);

    /// <summary>The scheduler a compensation thread on the calling thread stands in for, if any.</summary>
    internal static WorkStealingTaskScheduler? CurrentCompensatingScheduler => t_compensating;

    private int _compensationThreads;
    private long _compensationThreadsStarted;
    private long _compensationProgress;
    private long _compensationExecuted; // counted in SchedulerStatistics.TasksExecuted, as a worker counts what it runs

    // Watchdog thread only.
    private long _watchedCompensationProgress = -1;
    private long _starvedSince;

    // GC.GetTotalPauseDuration() when _starvedSince was taken: the standstill counts only time outside collections.
    private TimeSpan _pausedBeforeStarved;

    /// <summary>How many compensation threads may run at once: enough for nested blocking several levels deep.</summary>
    private int MaxCompensationThreads => Math.Max(64, WorkerCount * 8);

    /// <summary>How many compensation threads have started since construction (for tests and diagnostics).</summary>
    internal long CompensationThreadsStarted => Volatile.Read(ref _compensationThreadsStarted);

    /// <summary>How many compensation threads are running now.</summary>
    internal int LiveCompensationThreads => Volatile.Read(ref _compensationThreads);

    /// <summary>
    /// Watchdog thread, after a tick that found some worker busy: starts a compensation thread once every worker (and
    /// every compensation thread) has been at a standstill for <see cref="WorkStealingTaskSchedulerOptions.BlockingCompensationDelay"/>
    /// with work queued.
    /// </summary>
    private void CheckStarvation(bool everyWorkerStalled)
    {
        long progress = Volatile.Read(ref _compensationProgress);
        bool compensationStalled = Volatile.Read(ref _compensationThreads) == 0 || progress == _watchedCompensationProgress;
        _watchedCompensationProgress = progress;
        TimeSpan delay = _options.BlockingCompensationDelay;
        if (!everyWorkerStalled || !compensationStalled || IsTerminated || delay == Timeout.InfiniteTimeSpan || !HasAnyQueuedWork())
        {
            _starvedSince = 0;
            return;
        }

        long now = Environment.TickCount64;
        TimeSpan paused = GC.GetTotalPauseDuration();
        if (_starvedSince == 0)
        {
            _starvedSince = now;
            _pausedBeforeStarved = paused;
            return;
        }

        // A collection stops the workers and this thread alike, and the look after it finds every worker where the look
        // before it left them: a standstill of the runtime, not of the workers. Counted, a long collection (or a few
        // back to back) started a compensation thread under a busy scheduler that nothing blocked, a third thread on the
        // cores from then on (GcPauseCompensationTests: 1 in 2 runs of 2 s of forced collections of 110 ms).
        long stoodStill = now - _starvedSince - (long)(paused - _pausedBeforeStarved).TotalMilliseconds;

        // Each running compensation thread lengthens the wait for the next by one delay: a standstill of blocked threads
        // still gets its threads (nested joins need one per level), while long computations on every thread — which
        // look the same from here — add them ever more slowly instead of one per delay up to the cap.
        // A delay shorter than the watchdog's period counts as one period: truncated, a sub-millisecond delay made the
        // requirement 0 and started a thread at every tick up to the cap (AdversarialRescueTests), where the ramp promises
        // each next thread one delay later than the last.
        long delayMs = Math.Max((long)delay.TotalMilliseconds, (long)WatchdogPeriod.TotalMilliseconds);
        long required = delayMs * (1 + Volatile.Read(ref _compensationThreads));
        if (stoodStill < required)
        {
            return;
        }

        _starvedSince = now; // the next one only after another full delay of standstill
        _pausedBeforeStarved = paused;
        TryStartCompensationThread();
    }

    private void TryStartCompensationThread()
    {
        if (Interlocked.Increment(ref _compensationThreads) > MaxCompensationThreads)
        {
            Interlocked.Decrement(ref _compensationThreads);
            return;
        }

        try
        {
            var thread = new Thread(static state => ((WorkStealingTaskScheduler)state!).RunCompensation())
            {
                IsBackground = true,
                Name = _options.ThreadNamePrefix + " compensation",
            };

            // Counted before it starts: counted after, the thread could run an item that a test (or a dashboard) then
            // saw run by a compensation thread while the count still read 0 (CompensationTests, session 30's CI).
            Interlocked.Increment(ref _compensationThreadsStarted);
            try
            {
                // As .NET reports a thread the OS refused (a pids limit): OutOfMemoryException.
                Native.FaultInjection.ThrowIfOutOfMemoryInjected("compensation-thread");

                // No ExecutionContext of whoever made the watchdog tick: the thread serves every item in its own.
                thread.UnsafeStart(this);
            }
            catch
            {
                Interlocked.Decrement(ref _compensationThreadsStarted);
                throw;
            }
        }
        catch (Exception exception) when (exception is OutOfMemoryException or ThreadStartException)
        {
            // No thread now: the next tick of standstill tries again. The watchdog thread must not die of it.
            OnCompensationThreadExited();
        }
    }

    private void RunCompensation()
    {
        PrepareLoopThread();
        Task carrier = NewCarrier(static state => ((WorkStealingTaskScheduler)state!).CompensationLoop(), this);
        t_compensationCarrier = carrier;
        t_compensating = this;
        try
        {
            carrier.RunSynchronously(this); // inlined: TryExecuteTaskInline accepts this thread's own carrier
        }
        finally
        {
            t_compensationCarrier = null;
            t_compensating = null;
            OnCompensationThreadExited();
        }

        RaiseLoopFault(carrier);
    }

    /// <summary>Whether <paramref name="task"/> is the carrier of the compensation thread calling this (see <see cref="RunCompensation"/>).</summary>
    private static bool IsCompensationCarrier(Task task) => ReferenceEquals(t_compensationCarrier, task);

    private void OnCompensationThreadExited()
    {
        Interlocked.Decrement(ref _compensationThreads);

        // Shutdown waits for compensation threads (Worker.CanExit): parked workers look again.
        _idle.WakeAll();
    }

    private void CompensationLoop()
    {
        ExecutionContext loopContext = ExecutionContext.Capture()!;
        var spinner = new SpinWait();
        while (true)
        {
            if (TryTakeForCompensation(out WorkItem item))
            {
                spinner.Reset();
                RunCompensated(item, loopContext);
                continue;
            }

            // A blocked worker may spawn again in a moment (the next child of a loop of joins): look a few more times
            // before leaving. Once out, the watchdog starts another after a delay if the standstill goes on.
            if (spinner.NextSpinWillYield && spinner.Count > 30)
            {
                return;
            }

            try
            {
                spinner.SpinOnce(sleep1Threshold: -1);
            }
            catch (ThreadInterruptedException)
            {
                // An item interrupted this thread and returned: the interrupt was meant for a wait that is over. Dropped,
                // as a worker drops it at its park; thrown here it ended the loop as an unhandled exception.
            }
        }
    }

    /// <summary>
    /// Takes one item from outside the workers' private places: the global queue, then the oldest end of a deque, then the
    /// inbox of a busy worker (an idle one takes its own: continuations go to the worker that awaited them).
    /// </summary>
    private bool TryTakeForCompensation(out WorkItem item)
    {
        if (_terminated)
        {
            // Every worker has exited (a thread started by a tick that raced the shutdown): what arrives now goes to the
            // ThreadPool, and nothing of ours may run after Dispose returned.
            item = default;
            return false;
        }

        if (_globalQueue.TryDequeue(out item))
        {
            if (item.Target is WorkItemBatch batch)
            {
                OnBatchDequeued(batch);
                item = TakeFirstAndRequeue(batch);
            }

            return true;
        }

        foreach (Worker worker in _workers)
        {
            if (worker.Deque.TrySteal(out item) || (!worker.IsIdle && !worker.HasExited && worker.Inbox.TryDequeue(out item)))
            {
                return true;
            }

            if (worker.TryTakeHeldBatch(out WorkItemBatch? held))
            {
                item = TakeFirstAndRequeue(held);
                return true;
            }
        }

        item = default;
        return false;
    }

    /// <summary>
    /// An overflow batch taken by a compensation thread (from the global queue, or held by a worker): its oldest item
    /// now, the rest back to the global queue for whoever comes next. Should that enqueue run out of memory, the rest go
    /// back one by one; only what the queue refuses even so runs here, now, in order: accepted work is never dropped.
    /// </summary>
    /// <remarks>
    /// Not the rest inline at the first refusal: this thread may block in the first item, and an item waiting for a later
    /// sibling held here then waited for good (AdversarialHeldBatchTests). A single item needs a new segment of the queue
    /// only when the current one is full, a batch the same; with memory that short, running inline is the last resort.
    /// </remarks>
    private WorkItem TakeFirstAndRequeue(WorkItemBatch batch)
    {
        WorkItem first = batch.TakeFirst();
        if (batch.Count == 0)
        {
            ReturnBatch(batch);
            return first;
        }

        try
        {
            EnqueueBatch(batch); // wakes a parked worker itself
            return first;
        }
        catch (OutOfMemoryException)
        {
            RequeueOneByOne(batch);
        }

        if (batch.Count == 0)
        {
            ReturnBatch(batch);
            return first;
        }

        ExecutionContext loopContext = ExecutionContext.Capture()!;
        RunCompensated(first, loopContext);
        while (batch.Count > 1)
        {
            RunCompensated(batch.TakeFirst(), loopContext);
        }

        return batch.TakeFirst();
    }

    /// <summary>Moves the items of <paramref name="batch"/> to the global queue one by one, oldest first, until the queue refuses one.</summary>
    private void RequeueOneByOne(WorkItemBatch batch)
    {
        bool moved = false;
        while (batch.Count > 0)
        {
            try
            {
                AddToGlobalQueue(batch.First);
            }
            catch (OutOfMemoryException)
            {
                break;
            }

            batch.TakeFirst();
            moved = true;
        }

        if (moved)
        {
            OnGlobalEnqueued();
        }
    }

    /// <summary>Runs one item on a compensation thread, as a worker does (see Worker.Execute): an item's exception is raised as unhandled, and the thread's contexts are put back.</summary>
    private void RunCompensated(in WorkItem item, ExecutionContext loopContext)
    {
        try
        {
            if (RunWorkItem(item))
            {
                Interlocked.Increment(ref _compensationExecuted);
            }
        }
        catch (Exception exception)
        {
            Interlocked.Increment(ref _compensationExecuted);
            Unhandled.Raise(exception);
        }

        Interlocked.Increment(ref _compensationProgress);
        RestoreLoopContexts(loopContext);
    }
}
