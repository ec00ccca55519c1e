namespace Scheduler.Sources;

/// <summary>
/// One hand-off of a waker's work item to a <see cref="SynchronizationContext"/> (<c>Post</c>) or a foreign
/// <see cref="TaskScheduler"/> (a task on it): the claim that lets exactly one runner start the item.
/// </summary>
/// <remarks>
/// <para>
/// An exception out of <c>Post</c> or <c>QueueTask</c> cannot say whether the target kept the item. One that refused
/// never runs it; one that accepted it and threw anyway runs it too: inline before throwing, on its own thread before
/// the throw reaches us, or later. So on an exception the item also goes to the ThreadPool (the fallback), and the
/// target's callback and the fallback race for this hand-off's claim: the winner runs the item, the loser does nothing
/// with it. The exception is the target's bug when the target also ran (or claimed) the item, and is reported once,
/// by whichever side finds that out; a refusal (the callback never comes) stays silent.
/// </para>
/// <para>
/// Pooled: a hand-off is reused only after both the hand-off call (or the fallback it queued) and the target's
/// callback have released it, so a late callback always finds its own hand-off, never a later dispatch of the same
/// pooled waker. A target that never calls back (it refused, or dropped the item) leaves its hand-off to the GC. A
/// target that calls back twice gets an exception from the second call while the hand-off is not yet reused.
/// </para>
/// </remarks>
internal sealed class ContextHandOff : IThreadPoolWorkItem
{
    private const int Unclaimed = 0;
    private const int Claimed = 1;
    private const int TargetCalled = 2; // the target's callback has come (a second call is the target's bug)

    private static readonly ValueTaskSourcePool<ContextHandOff> s_pool = new(static () => new ContextHandOff(), PooledSourceDefaults.PoolCapacity);

    private IThreadPoolWorkItem? _workItem;
    private Exception? _targetFailure;
    private int _claim;
    private int _holders; // the hand-off call (the fallback, once queued, holds in its stead) and the target's callback

    private ContextHandOff()
    {
    }

    /// <summary>A hand-off of <paramref name="workItem"/>, held by the calling hand-off and by the target's future callback.</summary>
    public static ContextHandOff Rent(IThreadPoolWorkItem workItem)
    {
        ContextHandOff handOff = s_pool.Rent();
        handOff._workItem = workItem;
        handOff._holders = 2;
        return handOff;
    }

    /// <summary>The target's callback (<c>Post</c>'s, or the task's delegate): runs the item unless the fallback took it.</summary>
    /// <exception cref="InvalidOperationException">The target called this hand-off's callback a second time.</exception>
    public void RunFromTarget()
    {
        // A buggy target that calls back twice: caught while the hand-off is still held (the bit) or idle in its pool (no
        // item), before it touches the claim or the holds; touching them would corrupt the hand-off's next use (its
        // callback finding it claimed would never run that continuation). A second call after the hand-off was reused
        // cannot be told from the new use's own callback without a per-post allocation, and is not caught.
        IThreadPoolWorkItem? workItem = _workItem;
        int previous = workItem is null ? TargetCalled : Interlocked.Or(ref _claim, Claimed | TargetCalled);
        if ((previous & TargetCalled) != 0)
        {
            ThrowCalledTwice();
        }

        if ((previous & Claimed) == 0)
        {
            Release();
            workItem!.Execute();
            return;
        }

        // The fallback claimed it, so Post or QueueTask threw after accepting the item (the failure was written before
        // that claim). The hand-off call took it for a refusal and reported nothing: report it here.
        Exception? failure = _targetFailure;
        Release();
        if (failure is not null)
        {
            Unhandled.Raise(failure);
        }
    }

    /// <summary>The hand-off call: the target took the item without throwing.</summary>
    public void TargetAccepted() => Release();

    /// <summary>The hand-off call: <c>Post</c> or <c>QueueTask</c> threw <paramref name="exception"/>.</summary>
    public void TargetThrew(Exception exception)
    {
        // Written before the claim: a callback that comes late and loses the claim reports it.
        _targetFailure = exception;
        if (TryClaim())
        {
            // A refusal, or an item the target will run (or drop) later: the ThreadPool runs it now. Thrown here the
            // exception would reach the completing thread (the I/O reactor or a timer driver, stopping every other
            // operation they serve) and strand this awaiter. The fallback keeps this call's hold.
            ThreadPool.UnsafeQueueUserWorkItem(this, preferLocal: false);
            return;
        }

        // The target's callback claimed it first (inline in Post, or on another thread before Post or QueueTask threw):
        // the item ran or is running, so it is not queued again. The exception goes where one escaping a ThreadPool
        // work item goes, not to the completing thread.
        Release();
        Unhandled.Raise(exception);
    }

    /// <summary>The fallback: the hand-off call claimed the item after the target threw.</summary>
    void IThreadPoolWorkItem.Execute()
    {
        IThreadPoolWorkItem workItem = _workItem!;
        Release();
        workItem.Execute();
    }

    private bool TryClaim() => (Interlocked.Or(ref _claim, Claimed) & Claimed) == Unclaimed;

    private static void ThrowCalledTwice() =>
        throw new InvalidOperationException("The SynchronizationContext or TaskScheduler ran a posted continuation callback twice.");

    private void Release()
    {
        if (Interlocked.Decrement(ref _holders) == 0)
        {
            _workItem = null;
            _targetFailure = null;
            _claim = Unclaimed;
            s_pool.Return(this);
        }
    }
}
