using System.Diagnostics;
using System.Runtime.CompilerServices;

namespace Scheduler.Timers;

// Nurseries: where CreateTimer puts a new timer for its first reconcile, one single-producer ring per creating thread
// (TimerNursery), instead of the shared pending-changes stack. A thread's nursery belongs to the first wheel it
// creates a timer on, until that wheel is disposed; creations on any other wheel take the stack, as every Change and
// Dispose does.
public sealed partial class TimerWheel
{
    // Every live thread's nursery on this wheel (and those of dead threads until they are empty and pruned). Read and
    // written under the lock.
    private readonly List<TimerNursery> _nurseries = [];

    /// <summary>Whether new timers go to nurseries (on by default). Off, every creation pushes onto the stack: for tests and A/B measurements.</summary>
    internal bool NurseriesEnabled { get; set; } = true;

    /// <summary>
    /// Forgets the calling thread's nursery, so that its next creation binds one on the wheel it uses. For tests whose
    /// thread may have been bound by an earlier test's wheel; that wheel's driver still drains the old nursery.
    /// </summary>
    internal static void UnbindThreadNursery() => ThreadNurseries.Set(Thread.CurrentThread, null);

    /// <summary>How many nurseries the wheel knows (threads that created timers on it and were not pruned yet). For tests.</summary>
    internal int NurseryCount
    {
        get
        {
            lock (_lock)
            {
                return _nurseries.Count;
            }
        }
    }

    /// <summary>
    /// Adds a timer created on this thread, already marked enqueued, to the thread's nursery, and asks for the drain
    /// its arm needs: by <paramref name="deadlineTimestamp"/> for an absolute arm (computed from
    /// <paramref name="nowTimestamp"/>), within the reconcile interval for a relative one when the nursery was empty.
    /// False when the thread's nursery belongs to another wheel or stays full: the caller pushes onto the stack.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal bool TryAddToNursery(TimerEntry entry, bool absolute, long nowTimestamp, long deadlineTimestamp)
    {
        if (!NurseriesEnabled)
        {
            return false;
        }

        // Thread.CurrentThread, not a thread-static of our own: ExecutionContext.Capture in the same creation reads it
        // too, and the two reads share one thread-local lookup (ThreadNurseries).
        TimerNursery? nursery = ThreadNurseries.Of(Thread.CurrentThread);
        bool wasEmpty;
        if (nursery is null || nursery.Wheel != this || !nursery.TryAdd(entry, out wasEmpty))
        {
            if (!TryAddToNurserySlow(nursery, entry, out wasEmpty))
            {
                return false;
            }
        }

        if (absolute)
        {
            RequestReconcileOfArm(nowTimestamp, deadlineTimestamp);
        }
        else if (wasEmpty)
        {
            RequestReconcile();
        }

        return true;
    }

    /// <summary>The fast path's miss: <paramref name="nursery"/> is what it found for this thread (none, closed, another wheel's, or full).</summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    private bool TryAddToNurserySlow(TimerNursery? nursery, TimerEntry entry, out bool wasEmpty)
    {
        wasEmpty = false;
        if (nursery is null || nursery.IsClosed)
        {
            nursery = RegisterNursery(Thread.CurrentThread);
            if (nursery is null)
            {
                return false;
            }
        }
        else if (nursery.Wheel != this)
        {
            return false;
        }
        else
        {
            // Full: reconcile it here while its entries are still in this core's cache, if the lock is free (the
            // driver sleeps in Monitor.Wait, which releases it). Otherwise the stack takes this one.
            TryDrainInline();
        }

        return nursery.TryAdd(entry, out wasEmpty);
    }

    /// <summary>
    /// Creates this thread's nursery on this wheel and makes it the thread's (<see cref="ThreadNurseries"/>); null once
    /// the wheel is disposed.
    /// </summary>
    /// <remarks>
    /// The thread's slot is written under the wheel lock, as <see cref="CloseNurseriesLocked"/> and the pruning below
    /// clear slots: a nursery closed by a racing disposal is never put back in a slot after its disposal cleared it.
    /// </remarks>
    private TimerNursery? RegisterNursery(Thread thread)
    {
        var nursery = new TimerNursery(this, thread);
        lock (_lock)
        {
            if (_disposed)
            {
                return null;
            }

            // A new thread is when the list can grow, so it is when the list sheds threads that have exited. Their
            // slots let go too: a slot keeps its thread's Thread object alive, and with it the thread's id (which the
            // runtime hands out again only once that object is collected).
            _nurseries.RemoveAll(static n =>
            {
                if (n.Owner.IsAlive || n.HasEntries)
                {
                    return false;
                }

                ThreadNurseries.Forget(n);
                return true;
            });
            _nurseries.Add(nursery);
            ThreadNurseries.Set(thread, nursery);
        }

        return nursery;
    }

    /// <summary>
    /// The driver's (or a test's) drain: takes the entries of every nursery. Returns whether it took any, in which case
    /// the caller must recheck behind the barrier (<see cref="RecheckLocked"/>) with <c>nurseries: true</c>.
    /// Caller holds the lock.
    /// </summary>
    private bool DrainNurseriesLocked(ref long now)
    {
        bool any = false;
        foreach (TimerNursery nursery in _nurseries)
        {
            if (nursery.HasEntries)
            {
                nursery.DrainLocked(this, now);
                any = true;
                if (_recheck.Count >= RecheckLimit)
                {
                    now = RecheckLocked(now);
                }
            }
        }

        return any;
    }

    /// <summary>A user thread's inline drain: takes the entries of its own nursery only (no race with an owner to close). Caller holds the lock.</summary>
    private bool DrainOwnNurseryLocked(ref long now)
    {
        TimerNursery? own = ThreadNurseries.Of(Thread.CurrentThread);
        if (own is null || own.Wheel != this || own.DrainLocked(this, now) == 0)
        {
            return false;
        }

        // As for a popped burst (ReconcilePoppedLocked): the recheck list must not grow with a stream of creations
        // between two driver drains.
        if (_recheck.Count >= RecheckLimit)
        {
            now = RecheckLocked(now);
        }

        return true;
    }

    /// <summary>
    /// After the barrier of a drain that took entries from nurseries: an owner that added meanwhile may have seen its
    /// ring as not empty (a head read before our store reached it) and asked nothing. The barrier made its add visible,
    /// so any such entry shows here, and the driver comes back for it within the reconcile interval.
    /// </summary>
    private void RequestDrainForNurseriesLocked(long now)
    {
        Debug.Assert(Monitor.IsEntered(_lock), "Caller holds the wheel lock.");
        foreach (TimerNursery nursery in _nurseries)
        {
            if (nursery.HasEntries)
            {
                RequestDrainBy(ReconcileDeadline(now));
                return;
            }
        }
    }

    /// <summary>Wheel disposal: takes every nursery's entries (they are removed with the rest) and closes them all. Caller holds the lock.</summary>
    private long CloseNurseriesLocked(long now)
    {
        foreach (TimerNursery nursery in _nurseries)
        {
            nursery.Close();
            nursery.DrainLocked(this, now);

            // A live owner would drop it on its next creation; an exited one never comes back for it.
            ThreadNurseries.Forget(nursery);
        }

        _nurseries.Clear();
        return LinkRelativeArmsLocked(now);
    }
}
