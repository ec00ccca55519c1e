namespace Scheduler;

public sealed partial class WorkStealingTaskScheduler
{
    private readonly IdleCoordinator _idle;

    /// <summary>
    /// Wakes one parked worker when work was queued where peers can take it, but only when no worker is
    /// searching (a searcher will find it) and some worker is parked. Cheap when there is nothing to do:
    /// one volatile read.
    /// </summary>
    internal void NotifyParked() => _idle.NotifyOne();

    /// <summary>The idle coordinator's lock. For tests that hold it to make it contended.</summary>
    internal Lock IdleLockForTests => _idle.LockForTests;

    /// <summary>
    /// The search/park bookkeeping shared by all workers, after tokio's <c>Idle</c>: one word packs the
    /// number of unparked workers (high 16 bits) and of searching workers (low 16 bits), so "should an
    /// enqueue wake somebody?" is a single read; the sleeper list changes under a lock, which only the
    /// slow paths (park, unpark) take.
    /// </summary>
    internal sealed class IdleCoordinator
    {
        private const int UnparkedUnit = 1 << 16;
        private const int SearchingMask = UnparkedUnit - 1;

        private readonly int _workerCount;
        private readonly List<Worker> _sleepers;
        private readonly Lock _lock = new();
        private int _state;

        public IdleCoordinator(int workerCount)
        {
            _workerCount = workerCount;
            _sleepers = new List<Worker>(workerCount);
            _state = workerCount * UnparkedUnit; // everybody starts awake, nobody searching
        }

        /// <summary>Lets a worker start stealing unless half the workers already are (bounds contention on victims).</summary>
        public bool TryBeginSearching()
        {
            int searching = Volatile.Read(ref _state) & SearchingMask;
            if (2 * searching >= _workerCount)
            {
                return false;
            }

            Interlocked.Increment(ref _state);
            return true;
        }

        /// <summary>Returns true when the caller was the last searcher.</summary>
        public bool EndSearching() => (Interlocked.Decrement(ref _state) & SearchingMask) == 0;

        [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.AggressiveInlining)]
        public void NotifyOne()
        {
            int state = Volatile.Read(ref _state);
            if (ShouldWake(state))
            {
                NotifyOneSlow();
            }
            else if ((state & SearchingMask) != 0 && (state >> 16) < _workerCount)
            {
                NotifyOneWhileSearching();
            }
        }

        /// <summary>
        /// Somebody is searching, so this enqueue wakes nobody — unless the last searcher is just ending its search.
        /// That searcher decrements (a full fence) and then scans the queues; the item may have been published with
        /// a plain store (the owner's deque push), which the read above may have overtaken. A fence and a second
        /// read close the pair: either the searcher's scan sees the item, or this read sees it gone and wakes.
        /// Taken only while a worker searches and another is parked, never on a fully busy scheduler.
        /// </summary>
        [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.NoInlining)]
        private void NotifyOneWhileSearching()
        {
            Interlocked.MemoryBarrier();
            if (ShouldWake(Volatile.Read(ref _state)))
            {
                NotifyOneSlow();
            }
        }

        // Every lock below is entered with Uninterruptible.Enter: a thread with a Thread.Interrupt pending (a producer, or a
        // worker whose task interrupted it) must not throw out of a half-done step. The interrupt is raised again after.
        private void NotifyOneSlow()
        {
            bool interrupted = false;
            using (Uninterruptible.Enter(_lock, ref interrupted))
            {
                if (ShouldWake(Volatile.Read(ref _state)) && _sleepers.Count != 0)
                {
                    Worker sleeper = _sleepers[^1];
                    _sleepers.RemoveAt(_sleepers.Count - 1);
                    // The woken worker counts as unparked and searching from now on, so concurrent enqueues do
                    // not wake a second one for the same work (no thundering herd).
                    Interlocked.Add(ref _state, UnparkedUnit + 1);
                    Wake(sleeper, asSearcher: true, ref interrupted);
                }
            }

            Uninterruptible.Restore(interrupted);
        }

        /// <summary>Wakes <paramref name="worker"/> if it is parked (targeted work was put in its inbox).</summary>
        public void UnparkSpecific(Worker worker)
        {
            bool interrupted = false;
            using (Uninterruptible.Enter(_lock, ref interrupted))
            {
                if (worker.IsParked)
                {
                    _sleepers.Remove(worker);
                    Interlocked.Add(ref _state, UnparkedUnit);
                    Wake(worker, asSearcher: false, ref interrupted);
                }
            }

            Uninterruptible.Restore(interrupted);
        }

        public void TransitionToParked(Worker worker, bool wasSearching)
        {
            bool interrupted = false;
            using (Uninterruptible.Enter(_lock, ref interrupted))
            {
                worker.IsParked = true;
                _sleepers.Add(worker);
                Interlocked.Add(ref _state, -(UnparkedUnit + (wasSearching ? 1 : 0)));
            }

            Uninterruptible.Restore(interrupted);

            // The re-check of the queues that follows must see every item published before the registration. Items
            // from the global queue and inboxes are published by interlocked operations (full fences), but an owner
            // pushes to its own deque with a plain release store and then reads the idle state without a fence, so
            // that store may still sit in its core's store buffer while we register and re-check. A process-wide
            // barrier (membarrier: an IPI that serializes every core running this process) closes that window from
            // this side only — the asymmetric Dekker pattern — keeping the push path free of fences. It costs under a
            // microsecond, on a path that is about to sleep in the kernel anyway.
            Interlocked.MemoryBarrierProcessWide();
        }

        /// <summary>Called by a worker that registered as parked but then found work. False when a waker beat it.</summary>
        public bool TryUnparkSelf(Worker worker)
        {
            bool interrupted = false;
            bool unparked = false;
            using (Uninterruptible.Enter(_lock, ref interrupted))
            {
                if (worker.IsParked)
                {
                    _sleepers.Remove(worker);
                    worker.IsParked = false;
                    Interlocked.Add(ref _state, UnparkedUnit);
                    unparked = true;
                }
            }

            Uninterruptible.Restore(interrupted);
            return unparked;
        }

        public void WakeAll()
        {
            bool interrupted = false;
            using (Uninterruptible.Enter(_lock, ref interrupted))
            {
                foreach (Worker sleeper in _sleepers)
                {
                    Interlocked.Add(ref _state, UnparkedUnit);
                    Wake(sleeper, asSearcher: false, ref interrupted);
                }

                _sleepers.Clear();
            }

            Uninterruptible.Restore(interrupted);
        }

        /// <summary>The lock that guards the sleeper list. For tests that hold it to make it contended.</summary>
        internal Lock LockForTests => _lock;

        private bool ShouldWake(int state) => (state & SearchingMask) == 0 && (state >> 16) < _workerCount;

        private static void Wake(Worker worker, bool asSearcher, ref bool interrupted)
        {
            worker.WokenAsSearcher = asSearcher;
            worker.IsParked = false;
            worker.Signal(ref interrupted);
        }
    }
}
