using System.Runtime.CompilerServices;

namespace Scheduler;

/// <summary>
/// The thread that ticks the watchdogs of every <see cref="WorkStealingTaskScheduler"/> in the process (see
/// WorkStealingTaskScheduler.LifoRescue.cs): every <see cref="WorkStealingTaskScheduler.WatchdogPeriod"/> it looks at
/// the schedulers that have a busy worker, and it blocks while none has.
/// </summary>
/// <remarks>
/// A thread of its own rather than a <see cref="Timer"/>: a timer's callback runs on the .NET ThreadPool, and the code
/// that blocks a worker (sync-over-async) is the code that starves the ThreadPool too. The rescue then waited behind the
/// blocked pool, for seconds (LifoRescueStarvedPoolTests). One thread for the process, as the ThreadPool has one gate
/// thread, started by the first scheduler's constructor so that a refused thread fails that constructor rather than a
/// worker's loop later; it never exits (a background thread).
/// </remarks>
internal static class SchedulerWatchdog
{
    private static readonly Lock s_lock = new();
    private static readonly List<WorkStealingTaskScheduler> s_watched = [];
    private static readonly ManualResetEventSlim s_wake = new(initialState: false, spinCount: 0);

    // The watchdog thread's own copy of s_watched for one pass, so that ticks run outside the lock without allocating.
    private static WorkStealingTaskScheduler[] s_pass = new WorkStealingTaskScheduler[4];
    private static Thread? s_thread;

    // True while the thread waits for a first scheduler to watch (then a Watch must wake it). Under s_lock.
    private static bool s_sleeping;

    /// <summary>Tests only: the watchdog thread, once started.</summary>
    internal static Thread? WatchdogThread => Volatile.Read(ref s_thread);

    /// <summary>Tests only: the lock <see cref="Watch"/> and <see cref="Unwatch"/> take, for tests that make them meet it contended.</summary>
    internal static Lock LockForTests => s_lock;

    /// <summary>Tests only: whether <paramref name="scheduler"/> is on the list the ticks look at.</summary>
    internal static bool IsWatching(WorkStealingTaskScheduler scheduler)
    {
        lock (s_lock)
        {
            return s_watched.Contains(scheduler);
        }
    }

    /// <summary>
    /// Starts the watchdog thread if it is not running yet. Called by every scheduler's constructor (so its failure
    /// fails the construction); cheap after the first time.
    /// </summary>
    public static void EnsureStarted()
    {
        if (Volatile.Read(ref s_thread) is not null)
        {
            return;
        }

        lock (s_lock)
        {
            if (s_thread is null)
            {
                var thread = new Thread(Run) { IsBackground = true, Name = "WorkStealing watchdog" };
                // No ExecutionContext of the first scheduler's creator: the watchdog serves every scheduler.
                thread.UnsafeStart();
                Volatile.Write(ref s_thread, thread);
            }
        }
    }

    /// <summary>
    /// Puts <paramref name="scheduler"/> on the list the next ticks look at (no-op if it is there already). Called by the
    /// winner of the scheduler's disarmed-to-armed exchange, on a worker turning busy among others: a pending
    /// <see cref="Thread.Interrupt"/> must not throw out of it.
    /// </summary>
    public static void Watch(WorkStealingTaskScheduler scheduler)
    {
        bool interrupted = false;
        using (Uninterruptible.Enter(s_lock, ref interrupted))
        {
            if (!s_watched.Contains(scheduler))
            {
                s_watched.Add(scheduler);
            }

            if (s_sleeping)
            {
                s_sleeping = false;
                Uninterruptible.Set(s_wake, ref interrupted);
            }
        }

        Uninterruptible.Restore(interrupted);
    }

    /// <summary>Takes <paramref name="scheduler"/> off the list (its last worker exited), so the list holds no dead scheduler.</summary>
    public static void Unwatch(WorkStealingTaskScheduler scheduler)
    {
        bool interrupted = false;
        using (Uninterruptible.Enter(s_lock, ref interrupted))
        {
            s_watched.Remove(scheduler);
        }

        Uninterruptible.Restore(interrupted);
    }

    private static void Run()
    {
        while (true)
        {
            int count = TakePass();
            if (count == 0)
            {
                s_wake.Wait();
                s_wake.Reset(); // a Watch sets it only after it found us sleeping, which this pass's lock ended
                continue;
            }

            Thread.Sleep(WorkStealingTaskScheduler.WatchdogPeriod);
            Tick(count);
        }
    }

    /// <summary>
    /// One look at each scheduler of the pass. A frame of its own, left before the thread sleeps: this thread runs for
    /// the life of the process, mostly in the tier-0 or on-stack-replaced code of <see cref="Run"/>, whose stack slots
    /// the GC sees for the whole method. A loop variable there kept the last scheduler looked at, disposed or not, alive
    /// for as long as the watchdog then slept with nothing to watch (<c>WatchdogRetentionTests</c>).
    /// </summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    private static void Tick(int count)
    {
        for (int i = 0; i < count; i++)
        {
            WorkStealingTaskScheduler scheduler = s_pass[i];
            s_pass[i] = null!;
            if (!scheduler.OnWatchdogTick())
            {
                // Disarmed (every worker idle) or terminated. Under the lock, and only if still disarmed: a worker that
                // re-armed since (its exchange won) calls Watch after it, which then finds it listed or adds it again.
                lock (s_lock)
                {
                    if (!scheduler.IsWatchdogArmed || scheduler.IsTerminated)
                    {
                        s_watched.Remove(scheduler);
                    }
                }
            }
        }
    }

    // Copies the list for one pass; with nothing to watch, marks the thread sleeping (under the same lock as Watch's look).
    private static int TakePass()
    {
        lock (s_lock)
        {
            int count = s_watched.Count;
            if (count == 0)
            {
                s_sleeping = true;
                return 0;
            }

            if (s_pass.Length < count)
            {
                s_pass = new WorkStealingTaskScheduler[Math.Max(count, s_pass.Length * 2)];
            }

            s_watched.CopyTo(s_pass);
            return count;
        }
    }
}
