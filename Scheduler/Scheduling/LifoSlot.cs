using System.Runtime.CompilerServices;

namespace Scheduler;

/// <summary>
/// A worker's LIFO slot: the task it spawned or woke last, which it runs next. The owner thread reads and writes it
/// with plain loads and stores; another thread may take its item only through <see cref="TryRescue"/>, which the
/// scheduler's watchdog calls for a worker that has stopped making progress (see
/// <c>WorkStealingTaskScheduler.LifoRescue.cs</c>).
/// </summary>
/// <remarks>
/// <para>The two sides never both take an item, and the owner's side has no interlocked instruction: an asymmetric
/// Dekker. The owner raises <c>_ownerInside</c> around every access, checking <c>_rescuing</c> after raising it; a
/// rescuer raises <c>_rescuing</c>, runs a process-wide memory barrier (membarrier: every CPU running a thread of
/// this process executes a full fence) and then reads <c>_ownerInside</c>. Take the point where that barrier hits the
/// owner's CPU. If the owner's check of <c>_rescuing</c> came before it, the owner's raise of <c>_ownerInside</c> did
/// too and is visible to the rescuer, which backs off (or the owner had already left, and its writes to the slot are
/// visible as well). If the check came after it, the owner sees <c>_rescuing</c> and waits until the rescue is over
/// before touching the slot. The expensive barrier is on the rare side only.</para>
/// <para>The owner waits out a rescue under way; rescues are rare (the watchdog tries a worker once per tick), so
/// that wait is one barrier long. A rescuer retrying back to back would hold its flag nearly all the time and starve
/// the owner (a stress test that did so hung): never call <see cref="TryRescue"/> in a tight loop.</para>
/// <para>The struct lives in a field of its owner and is used by reference only; never copy it.</para>
/// </remarks>
internal struct LifoSlot
{
    private WorkItem _item;
    private bool _ownerInside;
    private int _rescuing;

    /// <summary>Any thread: the item's target, racily (one reference, never torn). For diagnostics and the watchdog.</summary>
    public readonly object? PeekTarget => _item.Target;

    /// <summary>Owner thread: puts <paramref name="item"/> in the slot and returns what it held.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public WorkItem Exchange(in WorkItem item)
    {
        EnterAsOwner();
        WorkItem previous = _item;
        _item = item;
        ExitAsOwner();
        return previous;
    }

    /// <summary>Owner thread: empties the slot; false when it held nothing (or a rescue just took it).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public bool TryTake(out WorkItem item)
    {
        if (_item.IsEmpty)
        {
            item = default; // nothing to guard: only the owner fills the slot
            return false;
        }

        item = Exchange(default);
        return !item.IsEmpty;
    }

    /// <summary>Owner thread: empties the slot if it holds <paramref name="target"/>.</summary>
    public bool TryTake(object target)
    {
        if (!ReferenceEquals(_item.Target, target))
        {
            return false; // only the owner puts items in: a rescue can empty the slot, never make it hold the target
        }

        EnterAsOwner();
        bool holds = ReferenceEquals(_item.Target, target);
        if (holds)
        {
            _item = default;
        }

        ExitAsOwner();
        return holds;
    }

    /// <summary>
    /// Any thread but the owner: takes the item unless the owner is using the slot at this moment. Costs a process-wide
    /// barrier (microseconds, and an interrupt on every CPU running this process): never call it per task.
    /// </summary>
    public bool TryRescue(out WorkItem item)
    {
        item = default;
        if (!TryBeginRescue())
        {
            return false; // another rescuer is at it
        }

        try
        {
            if (!Volatile.Read(ref _ownerInside))
            {
                // The owner is outside the slot and, until EndRescue, waits before entering it.
                item = _item;
                _item = default;
            }
        }
        finally
        {
            EndRescue();
        }

        return !item.IsEmpty;
    }

    /// <summary>First half of <see cref="TryRescue"/> (separate for tests): raises the flag, then the barrier.</summary>
    internal bool TryBeginRescue()
    {
        if (Interlocked.CompareExchange(ref _rescuing, 1, 0) != 0)
        {
            return false;
        }

        Interlocked.MemoryBarrierProcessWide();
        return true;
    }

    /// <summary>Second half of <see cref="TryRescue"/>: release, so the rescuer's write to the slot comes first.</summary>
    internal void EndRescue() => Volatile.Write(ref _rescuing, 0);

    /// <summary>Owner thread: call before touching the slot (tests call it to hold the slot).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal void EnterAsOwner()
    {
        Volatile.Write(ref _ownerInside, true);
        // A rescuer's process-wide barrier orders the store above before this load (see the remarks).
        if (Volatile.Read(ref _rescuing) != 0)
        {
            WaitOutRescue();
        }
    }

    /// <summary>Owner thread: call after touching the slot. Release: the slot's writes come first.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal void ExitAsOwner() => Volatile.Write(ref _ownerInside, false);

    [MethodImpl(MethodImplOptions.NoInlining)]
    private void WaitOutRescue()
    {
        do
        {
            Volatile.Write(ref _ownerInside, false); // let the rescuer see the owner out of the slot
            var spinner = default(SpinWait);
            while (Volatile.Read(ref _rescuing) != 0)
            {
                // A rescue is a barrier and two stores: microseconds. Thread.Yield rather than the spinner's sleeps,
                // which would throw on a pending Thread.Interrupt half-way through the worker's loop.
                if (spinner.NextSpinWillYield)
                {
                    Thread.Yield();
                }
                else
                {
                    spinner.SpinOnce();
                }
            }

            Volatile.Write(ref _ownerInside, true);
        }
        while (Volatile.Read(ref _rescuing) != 0);
    }
}
