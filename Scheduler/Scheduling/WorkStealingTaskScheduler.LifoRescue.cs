using System.Runtime.CompilerServices;

namespace Scheduler;

// The LIFO slot is private to its worker: no peer steals from it, which is what makes it cheap (plain loads and stores,
// and the next task runs cache-hot on the thread that spawned or woke it). The cost is liveness when the owner stops
// taking work: a task that blocks its worker (sync-over-async, a semaphore, a long computation) after spawning or waking
// another task strands that task in the slot, however idle the peers are. Found by a test: a task spawns a child that
// releases a semaphore, then waits on the semaphore; with two workers the child never ran (the ThreadPool runs it, and
// tokio has the same hole: tokio-rs/tokio#4941). Stealing from the slot on every search, as tokio tried and reverted,
// costs the owner an atomic per hop and breaks message-passing locality.
//
// So the slot stays private while its owner makes progress, and a watchdog rescues it when the owner does not: every
// WatchdogPeriod the watchdog thread (SchedulerWatchdog, one for the process, not a ThreadPool timer: the blocking code
// this guards against starves the ThreadPool too) looks at each busy worker, and one whose progress count (tasks
// executed plus inlined) and slot content did not change since the previous look has its slot moved to the global
// queue, which wakes a parked peer. A scheduler is watched only while some worker is busy: a tick that finds every
// worker idle disarms it, and the first worker to turn busy again re-arms it (no CPU while idle).
//
// The rescue must never race the owner for the slot (a task would run twice or be lost), and the owner's side stays
// free of interlocked instructions: an asymmetric Dekker with a process-wide barrier on the rescuer's side, in LifoSlot.
// See docs/scheduling.md, "Blocked workers and the LIFO slot".
public sealed partial class WorkStealingTaskScheduler
{
    /// <summary>How often the watchdog looks at busy workers; a stranded LIFO task waits one to two periods.</summary>
    internal static readonly TimeSpan WatchdogPeriod = TimeSpan.FromMilliseconds(10);

    private int _watchdogArmed;
    private long _lifoRescues;

    /// <summary>How many LIFO-slot tasks the watchdog moved off a worker that had stopped making progress.</summary>
    internal long LifoRescues => Volatile.Read(ref _lifoRescues);

    /// <summary>
    /// Tests only: the watchdog's ticks leave this scheduler alone (it stays armed). For tests of the wake-up paths that the
    /// watchdog would otherwise back up within a period or two, hiding a missed wake-up behind a short delay.
    /// </summary>
    internal bool SuppressWatchdogForTests { get; set; }

    /// <summary>True while the watchdog timer is armed (some worker was busy at its last tick, or turned busy since).</summary>
    internal bool IsWatchdogArmed => Volatile.Read(ref _watchdogArmed) != 0;

    private void StartWatchdog()
    {
        SchedulerWatchdog.EnsureStarted();
        _watchdogArmed = 1;
        SchedulerWatchdog.Watch(this);
    }

    private void StopWatchdog() => SchedulerWatchdog.Unwatch(this);

    /// <summary>
    /// Called by a worker that turns busy, after its full fence: re-arms the watchdog if a tick disarmed it. One volatile
    /// read when it is armed. Pairs with the tick's disarm (an interlocked write, then a look at every worker): either the
    /// tick sees this worker busy and re-arms, or this read sees the timer disarmed.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal void ArmWatchdog()
    {
        if (Volatile.Read(ref _watchdogArmed) == 0)
        {
            TryRearmWatchdog();
        }
    }

    private void TryRearmWatchdog()
    {
        // Disarmed, the scheduler may still be on the watchdog's list until the tick that disarmed it has taken it off
        // (it does so only while the flag still reads disarmed), so the winner of this exchange makes sure it is listed.
        if (Interlocked.CompareExchange(ref _watchdogArmed, 1, 0) == 0 && !IsTerminated)
        {
            SchedulerWatchdog.Watch(this);
        }
    }

    /// <summary>
    /// Moves the LIFO-slot item of worker <paramref name="workerIndex"/> to the global queue (waking a parked peer unless
    /// one is searching), unless the owner is using its slot at this moment. The watchdog calls it for a worker that has
    /// stopped making progress; tests call it to race the owner.
    /// </summary>
    internal bool TryRescueLifoSlot(int workerIndex)
    {
        if (!_workers[workerIndex].TryTakeLifoSlotForRescue(out WorkItem item))
        {
            return false;
        }

        Interlocked.Increment(ref _lifoRescues);
        EnqueueRescued(item);
        return true;
    }

    /// <summary>
    /// Rescuer: the item is out of the slot, where nobody else can find it, and was accepted long ago. An enqueue that runs
    /// out of memory (a new segment of the global queue) is retried after a pause instead of dropping it, and the exception
    /// must not end the watchdog thread (it has no caller to report to). Only the rescuer waits: other schedulers' ticks
    /// are late meanwhile, which is the least of a process that cannot allocate a queue segment.
    /// </summary>
    private void EnqueueRescued(in WorkItem item)
    {
        while (true)
        {
            try
            {
                AddToGlobalQueue(item);
                break;
            }
            catch (OutOfMemoryException)
            {
                Thread.Sleep(WatchdogPeriod);
            }
        }

        OnGlobalEnqueued();
    }

    /// <summary>
    /// One look of the watchdog thread at this scheduler. Returns whether the scheduler stays armed (some worker was
    /// busy); false when it disarmed itself or has terminated.
    /// </summary>
    internal bool OnWatchdogTick()
    {
        if (IsTerminated)
        {
            return false;
        }

        if (SuppressWatchdogForTests)
        {
            return true;
        }

        bool anyBusy = false;
        bool everyWorkerStalled = true;
        foreach (Worker worker in _workers)
        {
            anyBusy |= worker.WatchdogLook(out bool stalled, out bool stranded);
            everyWorkerStalled &= stalled;
            if (stranded)
            {
                TryRescueLifoSlot(worker.Index);
            }
            else if (stalled && worker.HasStealableWork)
            {
                // Its deque or inbox holds work that a peer could take, and it is not taking it. Every enqueue wakes a
                // parked peer unless one is searching, but one path does not (the LIFO cap's demotion, see
                // Worker.DemoteToDeque), and a worker preempted between its pop and that push can see its peer park
                // before the push lands. Wakes a parked peer only if nobody is searching (a searcher finds the work).
                NotifyParked();

                // Blocked, and still holding work a busy peer would never steal: to the global queue (BlockedRescue.cs).
                if (worker.IsBlockedAgain())
                {
                    RescueBlockedWorkerQueues(worker);
                }
            }
            else
            {
                worker.ClearBlockedLooks();
            }
        }

        if (anyBusy)
        {
            CheckStarvation(everyWorkerStalled); // after the rescues above: a stranded slot's task is in the global queue now
            return true;
        }

        // Everybody idle: disarm, then look again. A worker that turned busy before the disarm was seen above or is seen
        // now (and we take the flag back: if a worker won it first, it keeps the scheduler listed); one that turns busy
        // after it finds the flag disarmed and re-arms it (ArmWatchdog).
        Interlocked.Exchange(ref _watchdogArmed, 0);
        foreach (Worker worker in _workers)
        {
            if (!worker.IsIdle)
            {
                Interlocked.CompareExchange(ref _watchdogArmed, 1, 0);
                return true;
            }
        }

        return false;
    }

    internal sealed partial class Worker
    {
        // Watchdog only: this worker's progress count and LIFO task at the previous tick.
        private long _watchedProgress = -1;
        private object? _watchedLifo;

        /// <summary>
        /// Watchdog thread: records this worker's progress and LIFO task. Returns whether the worker is busy;
        /// <paramref name="stalled"/> is true when it is busy and its progress count did not move since the previous look,
        /// <paramref name="stranded"/> when, in addition, its LIFO task did not either.
        /// </summary>
        internal bool WatchdogLook(out bool stalled, out bool stranded)
        {
            stalled = false;
            stranded = false;
            if (_isIdle) // a parked worker is idle too (it stays so until it finds work)
            {
                _watchedProgress = -1;
                _watchedLifo = null;
                return false;
            }

            long progress = Volatile.Read(ref Counters.Executed) + Volatile.Read(ref Counters.Inlined);
            object? lifo = _lifoSlot.PeekTarget;
            stalled = progress == _watchedProgress;
            stranded = stalled && lifo is not null && ReferenceEquals(lifo, _watchedLifo);
            _watchedProgress = progress;
            _watchedLifo = lifo; // a rescue that found the owner inside its slot is retried at the next tick
            return true;
        }

        /// <summary>Any thread but the owner: see <see cref="LifoSlot.TryRescue"/>.</summary>
        internal bool TryTakeLifoSlotForRescue(out WorkItem item) => _lifoSlot.TryRescue(out item);
    }
}
