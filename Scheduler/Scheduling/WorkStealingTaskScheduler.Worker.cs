using System.Collections.Concurrent;
using System.Diagnostics;
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
        // items were accepted: this worker keeps them and takes them before the global queue (see TryTakeGlobal).
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

        public int ApproximateQueuedCount => _deque.Count + _inbox.Count + (_lifoSlot.PeekTarget is null ? 0 : 1) + (_heldBatch?.Count ?? 0);

        /// <summary>True once this worker's loop has ended (or its thread never started).</summary>
        internal bool HasExited => _hasExited;

        /// <summary>True when a peer could take work from here (the LIFO slot is private to its worker).</summary>
        public bool HasStealableWork => !_deque.IsEmpty || !_inbox.IsEmpty;

        public void CopyQueuedTargetsTo(List<object> destination)
        {
            if (_lifoSlot.PeekTarget is { } lifo)
            {
                destination.Add(lifo);
            }

            _deque.CopyTargetsTo(destination);
            _heldBatch?.CopyTargetsTo(destination);
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

        private void Run()
        {
            DefaultExecutionContext.LearnOnFreshThread(); // a fresh thread (UnsafeStart): for posts made in it (WorkStealingSynchronizationContext)
            SetCurrentWorker(this);
            if (_owner.WorkerContext is { } context)
            {
                System.Threading.SynchronizationContext.SetSynchronizationContext(context);
            }

            // The loop runs inside a task of this scheduler (a "carrier"), so that work which is not a task itself —
            // waker continuations, pipe callbacks, synchronization-context posts — sees this scheduler as
            // TaskScheduler.Current, and an `await` in it comes back here instead of going to the ThreadPool.
            // Tasks run by the loop set and restore the current task themselves. DenyChildAttach: nothing may
            // attach to the carrier as a child.
            _carrier = new Task(static state => ((Worker)state!).RunLoop(), this, CancellationToken.None, TaskCreationOptions.DenyChildAttach);
            _carrier.RunSynchronously(_owner);

            // The loop itself failed (not an item: Execute catches those), and the carrier captured it. The loop's
            // finally handed this worker's queues to its peers (or, for the last one, everything to the ThreadPool);
            // what is left is to say why this worker is gone, the way an item's unhandled exception is said, instead of
            // leaving it in a task nobody reads.
            if (_carrier.Exception is { } fault)
            {
                Unhandled.Raise(fault.InnerExceptions.Count == 1 ? fault.InnerExceptions[0] : fault);
            }
        }

        private void RunLoop()
        {
            _loopContext = ExecutionContext.Capture();
            try
            {
                while (true)
                {
                    if (TryGetWork(out WorkItem item))
                    {
                        if (_isIdle)
                        {
                            BecomeBusy();
                        }

                        Execute(item);
                        continue;
                    }

                    _isIdle = true;
                    NoteIdle();
                    if (TrySpinForWork(out item))
                    {
                        BecomeBusy();
                        Execute(item);
                        continue;
                    }

                    if (CanExit())
                    {
                        break;
                    }

                    Park(); // still idle until it finds work: peers keep off its inbox meanwhile
                }
            }
            finally
            {
                if (_isSearching)
                {
                    EndSearching();
                }

                _owner.ExitHookForTests?.Invoke();

                // An exited worker never takes its inbox again: let the survivors (or the final drain) have it. Exited
                // before not idle: a peer that reads the idle flag and then this one never takes it for a busy worker.
                _hasExited = true;
                _isIdle = false;
                SetCurrentWorker(null);
                _owner.OnWorkerExited();

                // Peers that parked because this worker was busy may exit now (or take what arrived in its inbox).
                _owner._idle.WakeAll();
            }
        }

        /// <summary>
        /// Shutdown: this idle worker may exit once Dispose was requested, nothing is queued where it could take it,
        /// every peer is parked or gone, and no compensation thread runs (it may be running what a peer waited for, and
        /// queue more; it wakes every sleeper as it exits). A busy peer may still expose work (spawn into its deque, have its LIFO slot
        /// rescued, be sent continuations from other threads) and then block until that work runs: exiting while it runs
        /// used to leave that work to nobody, a hang that the same program without Dispose never has. Idle is not enough
        /// either: a peer that has just taken an item while idle holds it where no queue shows it, its idle flag not yet
        /// cleared (<see cref="BecomeBusy"/>); exiting then left that item's blocking fork-join to nobody. A parked peer
        /// holds nothing: it registers as parked before it sleeps and is taken off the list before it takes work again.
        /// </summary>
        /// <remarks>
        /// The queues are read first, the peers' parked flags after: a peer that took an item this look missed had
        /// unregistered before taking it, so its flag reads unparked. Of two workers parking together the one that
        /// registers second (the idle lock orders them) sees the other parked in its re-check; it exits and wakes every
        /// sleeper (see <see cref="RunLoop"/>), and the others re-check in turn.
        /// </remarks>
        private bool CanExit()
        {
            if (!_owner.IsDisposeRequested)
            {
                return false;
            }

            _owner.ExitCheckHookForTests?.Invoke();
            Interlocked.MemoryBarrier(); // our own state before the peers' (shutdown only)
            return !_owner.HasAnyQueuedWork() && _owner.AllWorkersParkedOrExitedBesides(this) && _owner.LiveCompensationThreads == 0;
        }

        /// <summary>
        /// Leaves the idle state before running an item. A producer that found this worker idle (and not parked) posted
        /// to its inbox without waking a peer, counting on it to take the item itself; the item now has to wait for the
        /// one about to run, which may be long. The fence pairs with the producer's interlocked enqueue before its read
        /// of the idle flag: either the producer saw this worker busy and woke a peer, or this check sees the item.
        /// It also pairs with the watchdog's disarm: a busy worker re-arms a disarmed watchdog.
        /// </summary>
        private void BecomeBusy()
        {
            _owner.TurnBusyHookForTests?.Invoke();
            _isIdle = false;
            Interlocked.MemoryBarrier();
            _owner.ArmWatchdog();
            if (!_inbox.IsEmpty)
            {
                _owner.NotifyParked();
            }
        }

        private void Execute(in WorkItem item)
        {
            try
            {
                if (_owner.RunWorkItem(item))
                {
                    Counters.Executed++;
                }
            }
            catch (Exception exception)
            {
                // Tasks capture their own exceptions; this is a fire-and-forget callback (a post from an async void
                // method, a pipe callback, a work item) that threw. The worker lives on; the exception is raised
                // as unhandled exactly as the ThreadPool would raise it, so it is never lost silently.
                Counters.Executed++;
                Unhandled.Raise(exception);
            }

            // Items that are not tasks (pipe callbacks, wakers, posts; tasks that captured no context) run in the loop's
            // own contexts, and what one leaves there (an AsyncLocal value such as Activity.Current, a synchronization
            // context) was seen by every later item on this worker, and captured by what they queued. Put the loop's
            // back, as the ThreadPool does after every work item. Two thread-local reads when nothing changed.
            _owner.RestoreLoopContexts(_loopContext!);
        }

        private bool TryGetWork(out WorkItem item)
        {
            // Fairness: every N ticks look outside first (global queue, then inbox), so neither local churn
            // nor a stream of posts (a Task.Yield loop feeds the inbox) can starve outside producers.
            if (--_ticksToFairness <= 0 && FairnessTurn(out item))
            {
                _lifoRunsInARow = 0;
                return FoundWork();
            }

            if (_lifoSlot.TryTake(out WorkItem lifo))
            {
                if (_lifoRunsInARow < _lifoLimit)
                {
                    item = lifo;
                    _lifoRunsInARow++;
                    return FoundWork();
                }

                // Cap reached (a ping-pong pair keeps refilling the slot): give the next-newest local work, or
                // work from outside, one turn, then the demoted task runs as the newest item of the deque. Taking
                // the newest rather than the oldest keeps a spawn tree depth-first (bounded queues, cache-hot).
                WorkItem demoted = lifo;
                _lifoRunsInARow = 0;
                if (!TryTakeInboxOrGlobal(out item) && !_deque.TryPop(out item))
                {
                    item = demoted;
                    return FoundWork();
                }

                DemoteToDeque(demoted);
                return FoundWork();
            }

            _lifoRunsInARow = 0;
            if (_deque.TryPop(out item) || TryTakeInboxOrGlobal(out item) || TrySteal(out item))
            {
                return FoundWork();
            }

            return false;
        }

        /// <summary>
        /// Owner thread, at the LIFO cap: puts the demoted slot task into the deque, waking nobody, because the owner is
        /// about to run it. Should the item the owner runs first block until the demoted task has run (sync-over-async)
        /// just when every peer has parked, the watchdog wakes one (see <see cref="WatchdogLook"/>).
        /// </summary>
        internal void DemoteToDeque(in WorkItem demoted)
        {
            if (!_deque.TryPush(demoted))
            {
                // Deque full: keep it in the slot, it runs next anyway (the slot is empty: only this thread fills it).
                _lifoSlot.Exchange(demoted);
            }
        }

        private bool FairnessTurn(out WorkItem item)
        {
            _ticksToFairness = _fairnessInterval; // a countdown: no division on the per-task path
            if (!_isIdle)
            {
                OnBusyFairnessTurn();
            }

            return TryRescueStalledPeer(out item) || TryTakeGlobal(out item) || _inbox.TryDequeue(out item);
        }

        /// <summary>
        /// Busy workers do not steal, and idle ones leave a busy owner's inbox to it: good for affinity, but a worker that
        /// stops making progress (its thread preempted on an oversubscribed machine, or a long-running task) would hold
        /// the continuations queued to its inbox until it comes back, however busy with short work its peers are. So at
        /// every fairness turn a worker also looks at each peer's progress (tasks executed plus tasks inlined): a peer
        /// whose count has not moved since this worker's previous turn, while it is neither idle nor parked, is stalled,
        /// and this worker takes a batch of its inbox. One peer is looked at per turn.
        /// </summary>
        /// <remarks>
        /// <para>Found in the echo benchmark: three busy threads (two workers and the reactor) on two cores, a preempted
        /// worker's inbox of I/O completions waited for it, and about one round in four had its p99 near 8 ms instead of
        /// 2.5 ms. In three alternating pairs of echo runs, rounds above 4.5 ms went from 10 of 30 to 8 of 30, and none
        /// reached 7 ms (against 10 that did without).</para>
        /// <para>Only the inbox: the deque's work is stealable by any idle peer already, and taking half a "stalled"
        /// deque at fairness turns (where a few microseconds of one task look like a stall) quintupled skynet's steals,
        /// broke its depth-first order and cost 4% of its median and much of its tail. Costs one read of one peer's
        /// counters per fairness turn. The LIFO slot stays private, as in tokio.</para>
        /// </remarks>
        private bool TryRescueStalledPeer(out WorkItem item)
        {
            // Only a busy worker rescues: an idle one (whose polls also count down to fairness turns) already takes
            // inbox work from busy owners through TrySteal, under the searcher limit; a second path for it let an
            // idle worker take work targeted at an idle peer (ExecutionTests' targeted-work test caught it).
            Worker[] workers = _owner._workers;
            if (_isIdle || workers.Length == 1)
            {
                item = default;
                return false;
            }

            // One peer per turn, round robin: O(1) per turn however many workers there are (each peer is then looked
            // at every WorkerCount − 1 turns, and "no progress since the last look" spans that longer window).
            int i = _rescueCursor = (_rescueCursor + 1) % workers.Length;
            if (i == Index)
            {
                i = _rescueCursor = (i + 1) % workers.Length;
            }

            Worker peer = workers[i];
            long progress = Volatile.Read(ref peer.Counters.Executed) + Volatile.Read(ref peer.Counters.Inlined);
            bool progressed = progress != _peerProgress[i];
            _peerProgress[i] = progress;
            if (progressed || peer._isIdle || peer.IsParked)
            {
                item = default;
                return false;
            }

            if (!peer._inbox.TryDequeue(out item))
            {
                return false;
            }

            // The rest of a batch goes to this worker's deque, where idle peers can steal it in turn. Pushed newest
            // first: the owner pops the deque from the newest end, and these continuations waited in a FIFO inbox, so
            // the oldest of them should run first (pushed in arrival order, the batch ran newest-first).
            // Only what fits: a spill here, in the loop, could run out of memory with the batch in hand.
            int limit = Math.Min(RescueBatchSize, _deque.Capacity - _deque.Count);
            int moved = 0;
            while (moved < limit && peer._inbox.TryDequeue(out WorkItem extra))
            {
                _batchBuffer[moved++] = extra;
            }

            for (int newest = moved - 1; newest >= 0; newest--)
            {
                bool pushed = _deque.TryPush(_batchBuffer[newest]);
                Debug.Assert(pushed, "counted above, and only this thread pushes");
                _batchBuffer[newest] = default;
            }

            if (moved > 0)
            {
                _owner.NotifyParked();
            }

            Counters.Stolen += 1 + moved;
            return true;
        }

        private bool FoundWork()
        {
            if (_isSearching)
            {
                EndSearching();
            }

            return true;
        }

        private bool TryTakeInboxOrGlobal(out WorkItem item) =>
            _inbox.TryDequeue(out item) || TryTakeGlobal(out item);

        /// <summary>
        /// Takes one item from the global queue to run and, when the deque is empty, a small batch more into the
        /// deque (tokio does the same): one trip to the shared queue per batch instead of per task, and the batch
        /// can be stolen from here by idle peers.
        /// </summary>
        private bool TryTakeGlobal(out WorkItem item)
        {
            int moved = 0;
            if (_heldBatch is { } held)
            {
                // What the global queue refused last time, first (and once the deque has room, back in the deque).
                _heldBatch = null;
                item = held.TakeFirst();
                moved = PushBatchToDeque(held);
            }
            else if (!_owner.TryDequeueGlobal(out item))
            {
                return false;
            }
            else if (item.Target is WorkItemBatch batch)
            {
                // An overflow batch: run its oldest item, keep the rest here (stealable by idle peers).
                _owner.OnBatchDequeued(batch);
                item = batch.TakeFirst();
                moved = PushBatchToDeque(batch);
            }
            else if (_deque.IsEmpty)
            {
                moved = MoveGlobalBatchToDeque();
            }

            if (moved > 0)
            {
                _owner.NotifyParked();
            }

            return true;
        }

        /// <summary>
        /// Owner, with an empty deque: moves up to <see cref="GlobalBatchSize"/> more items of the global queue into it, so
        /// that the global queue's FIFO order survives the deque's LIFO pops: collected first, pushed newest first (pushed
        /// in arrival order, each batch ran backwards: PreferFairness work queued from outside ran 0, 15, 14, …, 1, 16, 31,
        /// … on one worker). An overflow batch met on the way came later than the items before it, so it goes in first.
        /// Returns the number of items moved.
        /// </summary>
        private int MoveGlobalBatchToDeque()
        {
            int taken = 0;
            int moved = 0;
            while (taken < _globalBatchLimit && _owner.TryDequeueGlobal(out WorkItem extra))
            {
                if (extra.Target is WorkItemBatch overflow)
                {
                    _owner.OnBatchDequeued(overflow);
                    moved = PushBatchToDeque(overflow);
                    break;
                }

                _batchBuffer[taken++] = extra;
            }

            for (int newest = taken - 1; newest >= 0; newest--)
            {
                // Room: the deque was empty, an overflow batch is half a ring at most, and _globalBatchLimit is at most
                // the other half. A spill here, in the loop, could run out of memory with these items in hand.
                bool pushed = _deque.TryPush(_batchBuffer[newest]);
                Debug.Assert(pushed, "an empty ring holds a batch and _globalBatchLimit more");
                _batchBuffer[newest] = default;
            }

            return moved + taken;
        }

        /// <summary>
        /// Moves what fits of a dequeued overflow batch into this worker's deque; a remainder goes back to the global
        /// queue (the deque already held work), or, when that runs out of memory, stays with this worker (the loop must
        /// not throw). Returns the number of items moved.
        /// </summary>
        private int PushBatchToDeque(WorkItemBatch batch)
        {
            int moved = 0;
            while (batch.Count > 0 && _deque.TryPush(batch.Items[batch.Start]))
            {
                batch.TakeFirst();
                moved++;
            }

            if (batch.Count > 0)
            {
                try
                {
                    _owner.EnqueueBatch(batch);
                }
                catch (OutOfMemoryException)
                {
                    Debug.Assert(_heldBatch is null, "TryTakeGlobal takes a held batch before it dequeues another");
                    _heldBatch = batch; // not stealable until it goes back; a worker never idles while it holds one
                }
            }
            else
            {
                _owner.ReturnBatch(batch);
            }

            return moved;
        }

        private bool TrySteal(out WorkItem item)
        {
            Worker[] workers = _owner._workers;
            if (workers.Length > 1)
            {
                if (!_isSearching)
                {
                    if (!_owner._idle.TryBeginSearching())
                    {
                        item = default;
                        return false; // enough peers are already searching
                    }

                    _isSearching = true;
                }

                int start = (int)(NextRandom() % (uint)workers.Length);
                for (int i = 0; i < workers.Length; i++)
                {
                    Worker victim = workers[(start + i) % workers.Length];
                    if (victim == this)
                    {
                        continue;
                    }

                    if (victim._deque.TryStealHalf(_deque, out item, out int moved) || (!victim._isIdle && victim._inbox.TryDequeue(out item)))
                    {
                        Counters.Stolen += 1 + moved;
                        return true;
                    }
                }
            }

            return TryTakeGlobal(out item);
        }

        private void EndSearching()
        {
            _isSearching = false;

            // The last searcher found work. Producers that saw it searching woke nobody, so if anything is still
            // visible in a queue, wake a peer to take it. Only then: waking a peer for nothing (tokio's
            // unconditional rule) costs a futex wake-up, a core to spin on and a park per found item, which on a
            // small machine steals the CPU the woken work needs. The decrement is a full fence before the scan;
            // the producer side of the pair is in IdleCoordinator.NotifyOne.
            if (_owner._idle.EndSearching() && _owner.HasAnyQueuedWork())
            {
                _owner.NotifyParked();
            }
        }

        /// <summary>
        /// Puts back thread state a task changed (the ThreadPool resets it after every work item): a task that made its
        /// worker a foreground thread kept the process alive despite background workers, and a lowered priority or a
        /// new name stayed for every later task. Done before parking, not per item: the getters are runtime calls.
        /// </summary>
        private void RestoreThreadState()
        {
            Thread thread = _thread!;
            if (thread.IsBackground != _background)
            {
                thread.IsBackground = _background;
            }

            if (thread.Priority != ThreadPriority.Normal)
            {
                thread.Priority = ThreadPriority.Normal;
            }

            if (!ReferenceEquals(thread.Name, _threadName))
            {
                thread.Name = _threadName;
            }
        }

        private void Park()
        {
            _owner.ParkHookForTests?.Invoke();
            RestoreThreadState();
            // Only this thread resets its event, and only before registering as a sleeper: a Set that
            // races with us afterwards is never lost (MRES stays set until the next Reset).
            _parkEvent.Reset();
            _owner._idle.TransitionToParked(this, _isSearching);
            _isSearching = false;

            // Registration above was a full fence (lock). Any producer that enqueued before it sees us
            // as parked and wakes someone; any that enqueues after is seen by this re-check.
            // (Its own LIFO slot is empty here: TryGetWork takes it before the worker ever idles.)
            // Shutdown parks too while a peer is busy (see CanExit); the peer that ends the shutdown wakes every sleeper.
            if (_owner.HasAnyQueuedWork() || CanExit())
            {
                if (!_owner._idle.TryUnparkSelf(this))
                {
                    // A waker already took us off the sleeper list and set the event: consume its state.
                    _isSearching = WokenAsSearcher;
                }

                return;
            }

            Counters.Parks++;

            // A Thread.Interrupt pending on this thread (a task interrupted its own worker, or an interrupt meant for a
            // blocking call came after it returned) used to throw here and end the worker for good, silently. It is
            // dropped: the code it was meant for has finished, and kept pending it would hit an unrelated task later
            // (or cost an exception at every park until one blocks).
            bool interrupted = false;
            Uninterruptible.Wait(_parkEvent, ref interrupted);
            Counters.Wakeups++;
            _isSearching = WokenAsSearcher;
        }

        private uint NextRandom()
        {
            // xorshift32: cheap victim selection without shared state.
            uint x = _random;
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            _random = x;
            return x;
        }

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
