using System.Runtime.CompilerServices;

namespace Scheduler;

public sealed partial class WorkStealingTaskScheduler
{
    private readonly TaskCompletionSource _allWorkersExited = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private int _disposeRequested;
    private int _liveWorkers;
    private volatile bool _terminated;

    internal bool IsDisposeRequested => Volatile.Read(ref _disposeRequested) != 0;

    /// <summary>True once every worker has exited; from then on, work that still arrives runs on the ThreadPool.</summary>
    internal bool IsTerminated => _terminated;

    /// <summary>For tests: runs on a worker each time it is about to park (a failure injected there fails the worker loop).</summary>
    internal Action? ParkHookForTests { get; set; }

    /// <summary>
    /// For tests: runs on a worker that found an item while idle, just before it turns busy: the moment it holds work that
    /// no queue shows any more while its idle flag still says it has none.
    /// </summary>
    internal Action? TurnBusyHookForTests { get; set; }

    /// <summary>
    /// For tests: runs on an idle worker during shutdown as it checks whether it may exit, before it reads the queues: the
    /// moment a foreign producer's item (an I/O or timer completion) can land where that worker alone would take it.
    /// Read only once Dispose was requested.
    /// </summary>
    internal Action? ExitCheckHookForTests { get; set; }

    /// <summary>
    /// For tests: runs on a worker whose loop has ended, before it is marked exited: its last look found nothing, and an
    /// item that arrives from now on is left to its peers or, for the last worker, to the final drain.
    /// </summary>
    internal Action? ExitHookForTests { get; set; }

    /// <summary>
    /// For tests: runs on the last worker to exit, between its drain of the global queue and its drain of the workers'
    /// queues: the moment a producer's item lands in a queue the drain has already looked at, and only the producer's
    /// own read of <c>terminated</c> (set before the drain) can still send it to the ThreadPool.
    /// </summary>
    internal Action? FinalDrainHookForTests { get; set; }

    /// <summary>
    /// Stops intake from outside producers (then <c>StartNew</c> throws <see cref="TaskSchedulerException"/>
    /// wrapping <see cref="ObjectDisposedException"/>), runs everything already queued, and joins the workers.
    /// Idempotent. Called on one of this scheduler's workers it does not wait (a thread cannot join itself);
    /// the workers finish the queued work and exit on their own.
    /// </summary>
    /// <remarks>
    /// Work already running may still queue continuations while the scheduler drains; they run before the
    /// workers exit. Work that reaches the scheduler after the workers exited (a late timer or I/O wake-up)
    /// runs on the .NET ThreadPool rather than being lost.
    /// Afterwards the scheduler stays readable: <see cref="WorkerCount"/>, <see cref="MaximumConcurrencyLevel"/>,
    /// <see cref="IsWorkerThread"/>, <see cref="Factory"/> and <see cref="PipeScheduler"/> return what they did, and
    /// <see cref="GetStatistics"/> the final counts; a later <c>Dispose</c> or <c>DisposeAsync</c> does nothing more.
    /// </remarks>
    /// <exception cref="InvalidOperationException">Called on <see cref="Shared"/>, which is never disposed.</exception>
    public void Dispose()
    {
        RequestShutdown();
        if (IsWorkerThread || IsCompensationThread)
        {
            return; // the workers wait for this thread's loop to end (CanExit): joining them here would wait for ourselves
        }

        foreach (Worker worker in _workers)
        {
            worker.Thread?.Join();
        }
    }

    /// <summary>Like <see cref="Dispose"/>, but waits for the workers to exit without blocking a thread.</summary>
    /// <returns>A task that completes when every worker has exited (at once when called on a worker).</returns>
    /// <exception cref="InvalidOperationException">Called on <see cref="Shared"/>, which is never disposed.</exception>
    public ValueTask DisposeAsync()
    {
        RequestShutdown();
        return IsWorkerThread || IsCompensationThread ? default : new ValueTask(_allWorkersExited.Task);
    }

    private void RequestShutdown()
    {
        if (_isShared)
        {
            throw new InvalidOperationException("WorkStealingTaskScheduler.Shared is process-wide and cannot be disposed.");
        }

        if (Interlocked.Exchange(ref _disposeRequested, 1) == 0)
        {
            _idle.WakeAll();
            SchedulerMetrics.Unregister(this);
        }
    }

    private static void ThrowDisposedForOutsideProducer() =>
        throw new ObjectDisposedException(nameof(WorkStealingTaskScheduler), "The scheduler has been disposed and accepts no new work from outside its own tasks.");

    internal bool HasAnyQueuedWork()
    {
        if (!_globalQueue.IsEmpty)
        {
            return true;
        }

        foreach (Worker worker in _workers)
        {
            if (worker.HasStealableWork)
            {
                return true;
            }
        }

        return false;
    }


    /// <summary>
    /// True when every worker other than <paramref name="self"/> is parked or has exited: none of them runs or holds work
    /// (shutdown waits until then, see Worker.CanExit).
    /// </summary>
    internal bool AllWorkersParkedOrExitedBesides(Worker self)
    {
        foreach (Worker worker in _workers)
        {
            if (worker != self && !worker.IsParked && !worker.HasExited)
            {
                return false;
            }
        }

        return true;
    }

    internal void OnWorkerExited()
    {
        if (Interlocked.Decrement(ref _liveWorkers) != 0)
        {
            return;
        }

        _terminated = true;
        Interlocked.MemoryBarrier(); // producers: enqueue, fence, read _terminated; we: write, fence, drain
        StopWatchdog();
        try
        {
            DrainGlobalQueueToThreadPool();
            FinalDrainHookForTests?.Invoke();
            DrainWorkerQueuesToThreadPool();
        }
        finally
        {
            _allWorkersExited.TrySetResult(); // the workers have exited, whatever the drain met: DisposeAsync must end
        }
    }

    /// <summary>Runs whatever is still queued on the ThreadPool (only after every worker has exited).</summary>
    internal void DrainToThreadPool()
    {
        DrainGlobalQueueToThreadPool();
        DrainWorkerQueuesToThreadPool();
    }

    private void DrainGlobalQueueToThreadPool()
    {
        while (_globalQueue.TryDequeue(out WorkItem item))
        {
            if (item.Target is WorkItemBatch batch)
            {
                OnBatchDequeued(batch);
                while (batch.Count > 0)
                {
                    RunOnThreadPool(batch.TakeFirst());
                }
            }
            else
            {
                RunOnThreadPool(item);
            }
        }
    }

    private void DrainWorkerQueuesToThreadPool()
    {
        foreach (Worker worker in _workers)
        {
            while (worker.Inbox.TryDequeue(out WorkItem item) || worker.Deque.TrySteal(out item))
            {
                RunOnThreadPool(item);
            }
        }
    }

    private void RunOnThreadPool(WorkItem item)
    {
        try
        {
            Native.FaultInjection.ThrowIfOutOfMemoryInjected("threadpool-drain");

            ThreadPool.UnsafeQueueUserWorkItem(static state => state.Scheduler.RunWorkItem(state.Item), (Scheduler: this, Item: item), preferLocal: false);
        }
        catch (OutOfMemoryException)
        {
            RunRefusedByThreadPool(item);
        }
    }

    /// <summary>
    /// The ThreadPool could not take <paramref name="item"/> (out of memory: its work item, or a segment of its queue).
    /// The item is out of every queue of ours and was accepted, and with no worker left nobody else will ever see it, so
    /// the draining thread runs it now: late and on an unexpected thread, under memory exhaustion only, but never lost.
    /// A callback's exception is raised as unhandled, as on a worker (the thread that drains may be a producer's).
    /// </summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    private void RunRefusedByThreadPool(in WorkItem item)
    {
        try
        {
            RunWorkItem(item);
        }
        catch (Exception exception)
        {
            Unhandled.Raise(exception);
        }
    }
}
