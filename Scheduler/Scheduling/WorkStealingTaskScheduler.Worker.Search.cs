using System.Diagnostics;

namespace Scheduler;

public sealed partial class WorkStealingTaskScheduler
{
    // Where a worker looks beyond its own deque (the global queue in batches, its peers' deques and inboxes), the
    // searcher count, and parking.
    internal sealed partial class Worker
    {
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
            if (TryTakeHeldBatch(out WorkItemBatch? held))
            {
                // What the global queue refused last time, first (and once the deque has room, back in the deque).
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
            while (batch.Count > 0 && _deque.TryPush(batch.First))
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
                    // TryTakeGlobal takes a held batch before it dequeues another, and a thief's deque is empty (all fits).
                    Debug.Assert(_heldBatch is null, "a worker holds one batch at most");
                    Volatile.Write(ref _heldBatch, batch); // published whole: others may take it (TryTakeHeldBatch)
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

                    if (victim.TryTakeHeldBatch(out WorkItemBatch? held))
                    {
                        // Only after out of memory; its holder may be blocked in the item it took before. Into this empty deque.
                        item = held.TakeFirst();
                        Counters.Stolen += 1 + PushBatchToDeque(held);
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
    }
}
