namespace Scheduler;

// A worker's deque is stealable, but only idle workers steal: a busy peer runs its own work, the global queue and its
// inbox, and looks at no other deque. So when a worker blocks (a Wait the BCL does not inline, a semaphore, a lock) with
// work still in its deque or inbox, and every peer stays busy — a Task.Yield loop, an endless spawn chain, a compensation
// thread kept busy by the global queue — that work waited for the churn to end, however long (found by
// CompensationSoakTests, session 30: three no-op children of a blocked worker waited 2.5 s for a peer's yield loop).
// Stealing from deques at fairness turns was tried before and hurt (a few microseconds of one task look like a stall
// there: skynet's steals quintupled).
//
// So the watchdog does it, on evidence that takes more than microseconds: a worker that made no progress at two
// looks in a row (10–20 ms), whose thread was blocked (WaitSleepJoin) at both, has its deque and inbox moved to the
// global queue, where busy peers look every FairnessInterval items and compensation threads first. A worker that is
// merely computing keeps its deque: it will run that work itself, cache-hot, in the order it pushed it. (Its own Wait()
// would still inline a moved child: TryExecuteTaskInline runs a task from any queue, and the stale entry is skipped.)
public sealed partial class WorkStealingTaskScheduler
{
    private long _blockedQueueRescues;

    /// <summary>How many items the watchdog moved out of blocked workers' deques and inboxes (for tests and diagnostics).</summary>
    internal long BlockedQueueRescues => Volatile.Read(ref _blockedQueueRescues);

    /// <summary>
    /// Watchdog thread: moves what <paramref name="worker"/>'s deque and inbox hold now to the global queue, oldest first
    /// (the deque's stealable end, then the inbox), and a batch it holds (out of memory, see Worker.TryTakeHeldBatch). Bounded by what was there when it started: the owner is blocked, but
    /// other threads may keep posting to its inbox.
    /// </summary>
    private void RescueBlockedWorkerQueues(Worker worker)
    {
        int budget = worker.Deque.Count + worker.Inbox.Count;
        int moved = 0;
        while (moved < budget && (worker.Deque.TrySteal(out WorkItem item) || worker.Inbox.TryDequeue(out item)))
        {
            EnqueueRescued(item); // retries out of memory: the item is in nobody's queue meanwhile
            moved++;
        }

        if (worker.TryTakeHeldBatch(out WorkItemBatch? held))
        {
            // The remainder of a batch the global queue refused once already (out of memory): item by item, retried.
            while (held.Count > 0)
            {
                EnqueueRescued(held.TakeFirst());
                moved++;
            }

            ReturnBatch(held);
        }

        Interlocked.Add(ref _blockedQueueRescues, moved);
    }

    internal sealed partial class Worker
    {
        // Watchdog only: how many looks in a row found this worker stalled with its thread blocked.
        private int _blockedLooks;

        /// <summary>
        /// Watchdog thread, for a worker its last look found stalled: whether its thread has been blocked (in a wait, a
        /// sleep or a contended lock) at this look and the one before. A thread computing or preempted is Running.
        /// </summary>
        internal bool IsBlockedAgain()
        {
            bool blocked = _thread is { } thread && (thread.ThreadState & ThreadState.WaitSleepJoin) != 0;
            _blockedLooks = blocked ? _blockedLooks + 1 : 0;
            return _blockedLooks >= 2;
        }

        /// <summary>Watchdog thread: the worker made progress (or idled) since the last look.</summary>
        internal void ClearBlockedLooks() => _blockedLooks = 0;
    }
}
