using System.Diagnostics;
using System.Runtime.CompilerServices;

namespace Scheduler;

public sealed partial class WorkStealingTaskScheduler
{
    // The worker's loop: the carrier it runs in, the order it takes work in (LIFO slot, deque, fairness turns) and how it
    // runs an item.
    internal sealed partial class Worker
    {
        private void Run()
        {
            _owner.PrepareLoopThread(); // a fresh thread (UnsafeStart)
            SetCurrentWorker(this);

            // In a carrier (WorkStealingTaskScheduler.Carrier.cs). Should the loop itself fail, its finally has handed
            // this worker's queues to its peers (or, for the last one, everything to the ThreadPool) first.
            _carrier = NewCarrier(static state => ((Worker)state!).RunLoop(), this);
            _carrier.RunSynchronously(_owner);
            RaiseLoopFault(_carrier);
        }

        private void RunLoop()
        {
            _loopContext = ExecutionContext.Capture();
            try
            {
                while (true)
                {
                    RunAvailableWork();
                    _isIdle = true;
                    NoteIdle();
                    if (RunWorkFoundSpinning())
                    {
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
        /// Runs items until none is left to take (the LIFO slot, the deque, the global queue, the inbox, a peer's).
        /// </summary>
        /// <remarks>
        /// A frame of its own, left before the worker parks, because of what a frame keeps alive. The JIT reports some
        /// stack slots to the GC for the whole method rather than only while they are in use: a struct with a reference
        /// in it whose address is taken (the <c>out</c> item), and the locals and temporaries of the methods it inlines
        /// (the LIFO slot's take, a demoted item, a deque pop's copy). When the items ran in the loop's own frame, a
        /// parked worker kept the last of them (a finished task and everything it reaches: a state machine, a chain of
        /// promises; a faulted task that never reaches <see cref="TaskScheduler.UnobservedTaskException"/>) alive until it
        /// ran another. A heap dump of a failing <c>IdleRetentionTests</c> run named the root: a slot of the loop's
        /// tier-1 frame (docs/history.md, session 46; which variable the slot belonged to was not identified, so the
        /// fix does not depend on it). Clearing the locals would not do: a store to a slot the JIT considers dead may be
        /// removed. One call per idle-to-busy turn, not per item.
        /// </remarks>
        [MethodImpl(MethodImplOptions.NoInlining)]
        private void RunAvailableWork()
        {
            while (TryGetWork(out WorkItem item))
            {
                if (_isIdle)
                {
                    BecomeBusy();
                }

                Execute(item);
            }
        }

        /// <summary>
        /// Idle: spins a little for work (see <see cref="TrySpinForWork"/>) and runs what it found. Returns whether it ran
        /// an item. A frame of its own for the reason given at <see cref="RunAvailableWork"/>.
        /// </summary>
        [MethodImpl(MethodImplOptions.NoInlining)]
        private bool RunWorkFoundSpinning()
        {
            if (!TrySpinForWork(out WorkItem item))
            {
                return false;
            }

            BecomeBusy();
            Execute(item);
            return true;
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
    }
}
