namespace Scheduler;

// Overflow batches in the global queue (see WorkItemBatch): enqueue, re-enqueue of a remainder, and a small pool.
public sealed partial class WorkStealingTaskScheduler
{
    // A few spare batches, so a steady overflow (one spiller, one consumer) stops allocating. Slots are claimed and
    // filled with Interlocked.Exchange; a batch that finds every slot full is left to the GC.
    private readonly WorkItemBatch?[] _spareBatches = new WorkItemBatch?[4];

    // Σ (Count − 1) over the batches now in the global queue, so QueuedTasks counts their items, not the batches.
    private int _globalBatchSurplus;

    /// <summary>Items queued in the global queue, counting each batch's items (a racy snapshot).</summary>
    private int GlobalQueuedCount => _globalQueue.Count + Math.Max(0, Volatile.Read(ref _globalBatchSurplus));

    internal WorkItemBatch RentBatch()
    {
        WorkItemBatch?[] spares = _spareBatches;
        for (int i = 0; i < spares.Length; i++)
        {
            if (Volatile.Read(ref spares[i]) is not null && Interlocked.Exchange(ref spares[i], null) is { } batch)
            {
                batch.Start = 0;
                batch.End = 0;
                return batch;
            }
        }

        Native.FaultInjection.ThrowIfOutOfMemoryInjected("batch-rent");

        return new WorkItemBatch(_options.LocalQueueCapacity / 2);
    }

    internal void ReturnBatch(WorkItemBatch batch)
    {
        WorkItemBatch?[] spares = _spareBatches;
        for (int i = 0; i < spares.Length; i++)
        {
            if (Volatile.Read(ref spares[i]) is null && Interlocked.CompareExchange(ref spares[i], batch, null) is null)
            {
                return;
            }
        }
    }

    /// <summary>
    /// Puts a batch (at least one item) in the global queue and wakes a worker if nobody is looking. When the queue
    /// cannot take it (out of memory: a new segment), the batch is not queued, the surplus is taken back, and the caller,
    /// which still holds the batch, decides where its items go.
    /// </summary>
    internal void EnqueueBatch(WorkItemBatch batch)
    {
        // Counted before it is visible: the worker that dequeues it subtracts, and must not make the sum negative.
        Interlocked.Add(ref _globalBatchSurplus, batch.Count - 1);
        try
        {
            Native.FaultInjection.ThrowIfOutOfMemoryInjected("batch-enqueue");

            EnqueueGlobal(WorkItem.ForBatch(batch));
        }
        catch (OutOfMemoryException)
        {
            // Only the enqueue itself allocates (EnqueueGlobal's wake-up and late drain come after it and do not throw).
            Interlocked.Add(ref _globalBatchSurplus, -(batch.Count - 1));
            throw;
        }
    }

    /// <summary>Called by the worker that dequeued <paramref name="batch"/> from the global queue.</summary>
    internal void OnBatchDequeued(WorkItemBatch batch) => Interlocked.Add(ref _globalBatchSurplus, -(batch.Count - 1));
}
