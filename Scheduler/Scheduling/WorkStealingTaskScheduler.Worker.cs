using System.Collections.Concurrent;
using System.Diagnostics;
using System.Diagnostics.CodeAnalysis;
using System.Runtime.CompilerServices;

namespace Scheduler;

public sealed partial class WorkStealingTaskScheduler
{
    /// <summary>Counters written only by their worker's thread (plain increments, no contention) and read racily.</summary>
    internal struct WorkerCounters
    {
        public long Executed;
        public long Stolen;
        public long Inlined;
        public long Parks;
        public long Wakeups;
    }

    /// <summary>One worker thread: its deque, LIFO slot, inbox, parking event and the loop that ties them together.</summary>
    [System.Diagnostics.CodeAnalysis.SuppressMessage("Design", "CA1001", Justification = "The park event holds no kernel handle on .NET (it waits on a Monitor) and a late Set after shutdown must stay harmless, so it is never disposed.")]
    internal sealed partial class Worker
    {
        private readonly WorkStealingTaskScheduler _owner;
        private readonly WorkStealingDeque _deque;
        private readonly ConcurrentQueue<WorkItem> _inbox = new();
        private readonly ManualResetEventSlim _parkEvent = new(false, spinCount: 0);
        private readonly int _lifoLimit;
        private readonly int _fairnessInterval;
        private readonly int _spinIterations;

        // How many extra items a worker moves from the global queue into its (empty) deque per visit.
        private const int GlobalBatchSize = 15;

        // How many extra items a fairness turn moves from a stalled peer's inbox into this worker's deque.
        private const int RescueBatchSize = 15;

        private const int BatchBufferSize = GlobalBatchSize > RescueBatchSize ? GlobalBatchSize : RescueBatchSize;

        private Thread? _thread;
        private bool _background;
        private string? _threadName;
        private Task? _carrier;

        // The execution context the loop runs in (the carrier's), restored after any item that changed it.
        private ExecutionContext? _loopContext;

        // Owner-thread state.
        private LifoSlot _lifoSlot; // private to this thread, but for the watchdog's rescue: see LifoSlot
        private int _lifoRunsInARow;
        private int _ticksToFairness;
        private uint _random;
        private bool _isSearching;

        // Each peer's progress count (executed plus inlined) as this worker last saw it, and the peer to look at next.
        private readonly long[] _peerProgress;
        private int _rescueCursor;

        // Where a batch taken from a FIFO queue (the global queue, a stalled peer's inbox) waits while it is pushed in
        // reverse, so that this worker's LIFO pops run it oldest first.
        private readonly WorkItem[] _batchBuffer = new WorkItem[BatchBufferSize];

        // How many extra items a visit to the global queue moves into an empty deque: GlobalBatchSize, but never more than
        // half the ring, so that an overflow batch met on the way (half a ring at most) fits too and the loop never spills.
        private readonly int _globalBatchLimit;

        // An overflow batch whose remainder the global queue refused (out of memory). The loop must not throw, and the
        // items were accepted: this worker keeps them and takes them before the global queue (see TryTakeGlobal). Others
        // take it too (TryTakeHeldBatch), since the worker may block in the item it runs next: an idle peer, a compensation
        // thread, the watchdog's rescue of a blocked worker. Written by the owner only while null.
        private WorkItemBatch? _heldBatch;

        // Written by a waker under the idle lock before it sets the event; read by this worker after waking.
        internal bool WokenAsSearcher;

        // True while this worker is registered as a sleeper (changed only under the idle lock).
        internal volatile bool IsParked;

        // True while this worker has run out of work (spinning or parked). Peers leave an idle worker's inbox
        // alone: the owner is about to take it itself, and keeping it there keeps the continuation on the
        // worker that awaited it. Written only by the owner, on idle transitions (not per task).
        private volatile bool _isIdle;

        // True once this worker's loop has ended (set before it clears _isIdle on its way out).
        private volatile bool _hasExited;

        public WorkerCounters Counters;

        public Worker(WorkStealingTaskScheduler owner, int index)
        {
            _owner = owner;
            Index = index;
            WorkStealingTaskSchedulerOptions options = owner._options;
            _deque = new WorkStealingDeque(options.LocalQueueCapacity);
            _lifoLimit = options.LifoSlotLimit;
            _fairnessInterval = options.FairnessInterval;
            _spinIterations = options.SpinIterations;
            _globalBatchLimit = Math.Min(GlobalBatchSize, options.LocalQueueCapacity / 2);
            _random = (uint)(index * 0x9E3779B9u) | 1;
            _peerProgress = new long[options.WorkerCount];
            _peerProgress.AsSpan().Fill(-1); // never a real count: the first look at a peer is never a stall
        }

        public WorkStealingTaskScheduler Owner => _owner;

        /// <summary>True while this worker has run out of work (spinning or parked): peers then keep off its inbox.</summary>
        internal bool IsIdle => _isIdle;

        public int Index { get; }

        public Thread? Thread => _thread;

        internal WorkStealingDeque Deque => _deque;

        internal ConcurrentQueue<WorkItem> Inbox => _inbox;

        public void Start(bool background)
        {
            _background = background;
            _threadName = $"{_owner._options.ThreadNamePrefix} #{Index}";
            _thread = new Thread(static state => ((Worker)state!).Run(), maxStackSize: 0)
            {
                IsBackground = background,
                Name = _threadName,
            };
            _thread.UnsafeStart(this);
        }

        /// <summary>The constructor failed before this worker's thread started: it counts as exited (never busy, nothing to join).</summary>
        internal void MarkNeverStarted()
        {
            _thread = null;
            _hasExited = true;
        }

        /// <summary>Owner thread: queue work spawned or woken by the running task.</summary>
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public void PushLocal(in WorkItem item)
        {
            if (_lifoLimit == 0)
            {
                PushToDeque(item);
                return;
            }

            // The newest task goes to the LIFO slot (it runs next, cache-hot); the one it displaces goes
            // to the deque, where peers can steal it, so wake one if nobody is looking.
            WorkItem displaced = _lifoSlot.Exchange(item);
            if (!displaced.IsEmpty)
            {
                if (!_deque.TryPush(displaced))
                {
                    PushDisplacedToFullDeque(displaced);
                }

                _owner.NotifyParked();
            }
        }

        /// <summary>
        /// Owner thread, when the item a push displaced from the LIFO slot finds the deque full: the spill may run out of
        /// memory, and the displaced item was accepted by an earlier call. So it goes back into the slot while the spill
        /// runs: a failure then fails the new item only (with the exception to its caller, which the TPL turns into a
        /// faulted task), and the slot and the ring hold everything that was queued before.
        /// </summary>
        [MethodImpl(MethodImplOptions.NoInlining)]
        private void PushDisplacedToFullDeque(WorkItem displaced)
        {
            WorkItem item = _lifoSlot.Exchange(displaced);
            if (item.IsEmpty)
            {
                return; // the watchdog rescued the new item to the global queue meanwhile: nothing left to make room for
            }

            SpillHalfToGlobal(); // throws on out of memory: the new item was never visible to anybody else
            displaced = _lifoSlot.Exchange(item);
            if (!displaced.IsEmpty)
            {
                bool pushed = _deque.TryPush(displaced); // empty when the watchdog rescued it meanwhile
                Debug.Assert(pushed, "the spill made room and only this thread pushes");
            }
        }

        private void PushToDeque(in WorkItem item)
        {
            if (!_deque.TryPush(item))
            {
                SpillHalfToGlobal(); // throws on out of memory with the ring as it was: only this new item fails
                bool pushed = _deque.TryPush(item);
                Debug.Assert(pushed, "the spill made room (or thieves did) and only this thread pushes");
            }

            _owner.NotifyParked();
        }

        /// <summary>Any thread: queue work for this worker specifically, and unpark it if it sleeps.</summary>
        public void PostToInbox(in WorkItem item)
        {
            Native.FaultInjection.ThrowIfOutOfMemoryInjected("inbox-enqueue"); // where the queue may allocate a segment

            _inbox.Enqueue(item); // interlocked: orders the enqueue before the IsParked read below
            if (_owner.IsTerminated)
            {
                _owner.DrainToThreadPool();
                return;
            }

            if (IsParked)
            {
                _owner._idle.UnparkSpecific(this);
            }
            else if (!_isIdle)
            {
                // The owner is busy: it will take the item itself unless it is running something long, or blocked
                // waiting for this very item (sync-over-async on a worker). A searching peer takes inbox items from a
                // busy owner, so make sure one is looking (one volatile read when nobody is parked).
                _owner.NotifyParked();
            }

            // An idle owner that is not parked is spinning: it takes the item itself within a poll, or finds it when
            // it re-checks the queues after registering to park. A peer woken for it could not even take it (peers
            // keep off an idle owner's inbox): it cost a futex wake-up and a third spinning thread on two cores for
            // nothing. Should the owner turn busy with other work meanwhile, it looks at its inbox right after
            // (BecomeBusy) and wakes a peer itself.
        }

        /// <summary>Owner thread: remove <paramref name="task"/> from the LIFO slot or the deque's tail before inlining it.</summary>
        public bool TryRemoveLocal(Task task)
        {
            if (_lifoSlot.TryTake(task)) // false also when the watchdog just rescued it
            {
                return true;
            }

            return _deque.TryPopIfNewest(task);
        }

        public int ApproximateQueuedCount => _deque.Count + _inbox.Count + (_lifoSlot.PeekTarget is null ? 0 : 1) + (Volatile.Read(ref _heldBatch)?.Count ?? 0);

        /// <summary>True once this worker's loop has ended (or its thread never started).</summary>
        internal bool HasExited => _hasExited;

        /// <summary>True when a peer could take work from here (the LIFO slot is private to its worker).</summary>
        public bool HasStealableWork => !_deque.IsEmpty || !_inbox.IsEmpty || Volatile.Read(ref _heldBatch) is not null;

        /// <summary>
        /// Any thread: takes the batch this worker holds (see <c>_heldBatch</c>), if any. The taker owns it from then on.
        /// A plain read first: on every path but out of memory there is none, and the exchange is then skipped.
        /// </summary>
        internal bool TryTakeHeldBatch([NotNullWhen(true)] out WorkItemBatch? batch)
        {
            batch = Volatile.Read(ref _heldBatch) is null ? null : Interlocked.Exchange(ref _heldBatch, null);
            return batch is not null;
        }

        public void CopyQueuedTargetsTo(List<object> destination)
        {
            if (_lifoSlot.PeekTarget is { } lifo)
            {
                destination.Add(lifo);
            }

            _deque.CopyTargetsTo(destination);
            Volatile.Read(ref _heldBatch)?.CopyTargetsTo(destination); // best effort, as the rest: a taker may be emptying it
            foreach (WorkItem item in _inbox)
            {
                if (item.Target is not null)
                {
                    destination.Add(item.Target);
                }
            }
        }

        /// <summary>Wakes this worker's thread. Called by the idle coordinator only, under its lock.</summary>
        internal void Signal(ref bool interrupted) => Uninterruptible.Set(_parkEvent, ref interrupted);

        public bool IsCarrier(Task task) => ReferenceEquals(task, _carrier);

        /// <summary>
        /// Overflow: moves the older half of the ring to the global queue in one claim (tokio does the same), as one batch
        /// entry, so the owner keeps pushing locally and a peer picks the whole batch up at once. Out of memory (a new
        /// batch, or a segment of the global queue) throws with the ring as it was, in content if not in order.
        /// </summary>
        [MethodImpl(MethodImplOptions.NoInlining)]
        private void SpillHalfToGlobal()
        {
            WorkItemBatch batch = _owner.RentBatch(); // may allocate: before anything leaves the ring
            batch.End = _deque.TakeOldestBatch(batch.Items);
            if (batch.Count == 0)
            {
                _owner.ReturnBatch(batch);
                return;
            }

            try
            {
                _owner.EnqueueBatch(batch);
            }
            catch (OutOfMemoryException)
            {
                // The taken half was queued by callers that were told it was: put it back. There is room (only this
                // thread pushes, and it took these slots); the items become the newest, which only changes their order.
                while (batch.Count > 0)
                {
                    bool pushed = _deque.TryPush(batch.TakeFirst());
                    Debug.Assert(pushed, "the owner took these slots itself a moment ago");
                }

                _owner.ReturnBatch(batch);
                throw;
            }
        }
    }
}
