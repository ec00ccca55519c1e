namespace Scheduler;

public sealed partial class WorkStealingTaskScheduler
{
    /// <summary>
    /// Tests only, for a failure report: every place of this scheduler that still points at <paramref name="target"/>
    /// (global queue, spare batches, each worker's deque slots, LIFO slot, inbox, held batch, batch buffer, the watchdog's
    /// last look). Not the workers' stack frames: a heap dump names those (see docs/history.md, session 46).
    /// Enumerates the concurrent queues, which keeps their current segments from clearing slots afterwards: call it only
    /// once a test has already failed.
    /// </summary>
    internal List<string> DescribeHoldersForTests(object target)
    {
        var holders = new List<string>();
        foreach (WorkItem item in _globalQueue)
        {
            if (ReferenceEquals(item.Target, target) || (item.Target is WorkItemBatch batch && batch.Items.Any(i => ReferenceEquals(i.Target, target))))
            {
                holders.Add("global queue");
            }
        }

        for (int i = 0; i < _spareBatches.Length; i++)
        {
            if (Volatile.Read(ref _spareBatches[i]) is { } spare && spare.Items.Any(item => ReferenceEquals(item.Target, target)))
            {
                holders.Add($"spare batch {i}");
            }
        }

        foreach (Worker worker in _workers)
        {
            worker.DescribeHoldersForTests(target, holders);
        }

        return holders;
    }

    internal sealed partial class Worker
    {
        internal void DescribeHoldersForTests(object target, List<string> holders)
        {
            string name = $"worker {Index}";
            foreach (int slot in _deque.SlotsReferencingForTests(target))
            {
                holders.Add($"{name}: deque slot {slot}");
            }

            if (ReferenceEquals(_lifoSlot.PeekTarget, target))
            {
                holders.Add($"{name}: LIFO slot");
            }

            if (_inbox.Any(item => ReferenceEquals(item.Target, target)))
            {
                holders.Add($"{name}: inbox");
            }

            if (Volatile.Read(ref _heldBatch) is { } held && held.Items.Any(item => ReferenceEquals(item.Target, target)))
            {
                holders.Add($"{name}: held batch");
            }

            if (_batchBuffer.Any(item => ReferenceEquals(item.Target, target)))
            {
                holders.Add($"{name}: batch buffer");
            }

            if (ReferenceEquals(_watchedLifo, target))
            {
                holders.Add($"{name}: watchdog's last look");
            }
        }
    }
}
