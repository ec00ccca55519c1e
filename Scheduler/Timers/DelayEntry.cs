using System.Threading.Tasks.Sources;
using Scheduler.Sources;

namespace Scheduler.Timers;

/// <summary>
/// One <see cref="TimerWheel.DelayAsync"/> operation: a wheel entry and an <see cref="IValueTaskSource"/> built on
/// <see cref="WakerCore{TResult}"/>, pooled, so a delay allocates nothing in steady state. The core queues the
/// entry itself as the work item that resumes the awaiter on its own worker (or context, or the ThreadPool).
/// </summary>
/// <remarks>
/// <para>
/// Three producers race to complete a use: the driver (expiry), the cancellation callback and the wheel's
/// <see cref="TimerWheel.Dispose"/>. Each completes with the version of the use it belongs to, so exactly one
/// wins and a late one never touches the next use. Neither starting nor cancelling takes the wheel lock: both
/// push the entry onto the wheel's pending-changes stack and the driver links or unlinks it.
/// </para>
/// <para>
/// So the driver may still hold the entry (linked, or on the stack) after a cancellation has completed the use
/// and its awaiter has consumed it. The entry goes back to the pool only when both sides have let go: the
/// consumer (after <see cref="GetResult"/>) and the driver (once the entry is neither linked nor enqueued);
/// whichever is second returns it. The cancellation registration is disposed (waiting out a running callback)
/// before the consumer lets go, so a callback can never act on a later use.
/// </para>
/// </remarks>
internal sealed class DelayEntry : TimerEntry, IValueTaskSource, IThreadPoolWorkItem
{
    /// <summary>Entries kept for reuse after a burst; beyond this, completed entries are left to the GC.</summary>
    internal const int PoolCapacity = 1024;

    private static readonly Action<object?, CancellationToken> s_onCanceled = static (state, token) => ((DelayEntry)state!).OnCanceled(token);

    // The shared pooling toolkit: per-core slots plus a lock-free overflow, bounded (the 16-bit version wraps).
    private static readonly ValueTaskSourcePool<DelayEntry> s_pool = new(static () => new DelayEntry(), PoolCapacity);

    // Flags bits. Enqueued: on the pending stack (or about to be). Canceled: the cancellation callback won and
    // the driver must unlink the entry. DriverOwned: the wheel still references the entry (linked, enqueued, or
    // about to be). ConsumerDone: the awaiter has consumed and reset this use. Infinite: park it on the list of
    // deadline-less waits rather than in the wheel. Invariant: Enqueued implies DriverOwned.
    private const int Enqueued = 1;
    private const int Canceled = 2;
    private const int DriverOwned = 4;
    private const int ConsumerDone = 8;
    private const int Infinite = 16;

    // The token of a completion that must not be delivered (versions are 16-bit, so this never equals one).
    private const long NoToken = long.MinValue;

    private WakerCore<bool> _core;
    private TimerWheel? _wheel;
    private CancellationTokenRegistration _registration;

    private DelayEntry() => _core = new WakerCore<bool>(this);

    /// <summary>Entries the pool holds now (a racy snapshot). For tests.</summary>
    internal static int PooledCount => s_pool.Count;

    /// <summary>Starts a delay of <paramref name="delay"/> (positive, or infinite) on <paramref name="wheel"/>.</summary>
    internal static ValueTask Start(TimerWheel wheel, TimeSpan delay, CancellationToken cancellationToken)
    {
        DelayEntry entry = s_pool.Rent();
        short version = entry._core.Version;
        entry._wheel = wheel;

        bool pushed;
        if (delay == Timeout.InfiniteTimeSpan)
        {
            entry.Flags = Enqueued | DriverOwned | Infinite;
            pushed = wheel.TryPushPending(entry);
        }
        else
        {
            // The deadline travels in the (not yet linked) entry; the driver links it by this value.
            long now = wheel.GetTimestamp();
            entry.DeadlineTimestamp = wheel.DeadlineAfter(now, delay);
            entry.Flags = Enqueued | DriverOwned;
            pushed = wheel.TryPushPending(entry, now, entry.DeadlineTimestamp);
        }

        if (!pushed)
        {
            // Never published: nobody else can reference the entry.
            entry.Flags = 0;
            entry._wheel = null;
            s_pool.Return(entry);
            TimerWheel.ThrowDisposed();
        }

        // Registered after pushing: a token canceled meanwhile runs the callback right here, which completes the
        // entry and marks it for unlinking. Nobody can consume the result (and so dispose this registration) before we return.
        if (cancellationToken.CanBeCanceled)
        {
            entry._registration = cancellationToken.UnsafeRegister(s_onCanceled, entry);
        }

        return new ValueTask(entry, version);
    }

    internal override bool Reconcile(TimerWheel wheel, long nowTimestamp)
    {
        // Clear Enqueued and read the rest in one atomic step; the canceller sets Canceled and Enqueued in one, too.
        int flags = Interlocked.And(ref Flags, ~Enqueued);
        if ((flags & Canceled) != 0)
        {
            wheel.RemoveLocked(this);
            ReleaseByDriver();
        }
        else if ((flags & Infinite) != 0)
        {
            wheel.InsertInfiniteLocked(this);
        }
        else
        {
            wheel.InsertLocked(this, DeadlineTimestamp, nowTimestamp);
        }

        return true;
    }

    internal override long OnExpired(TimerWheel wheel, long nowTimestamp)
    {
        // Taken off the wheel by Advance: the wheel no longer links it. The batch still holds it with this token,
        // which goes stale the moment the entry is reset, so the driver may let go before firing.
        long token = TokenForLateCompletion();
        ReleaseByDriver();
        return token;
    }

    internal override void Fire(long token)
    {
        if (token != NoToken)
        {
            _core.TrySetResult((short)token, true);
        }
    }

    internal override long OnRemovedByDispose()
    {
        long token = TokenForLateCompletion();
        ReleaseByDriver();
        return token;
    }

    internal override void OnWheelDisposed(long token)
    {
        if (token != NoToken)
        {
            _core.TrySetException((short)token, new ObjectDisposedException(nameof(TimerWheel), "The TimerWheel was disposed while the delay was pending."));
        }
    }

    /// <summary>
    /// The version for a completion the driver delivers later (expiry, disposal), or <see cref="NoToken"/> when a
    /// cancellation has already won. A canceled entry can still be linked, and its awaiter may already have reset
    /// it: its current version is then the <em>next</em> use's, which must never be completed by this stale expiry.
    /// </summary>
    private long TokenForLateCompletion()
    {
        // Version first, then the flags: a reset can only follow the canceller's Canceled mark (the awaiter waits
        // for the cancellation callback before resetting), so a version read after a reset comes with Canceled seen.
        short version = _core.Version;
        return (Volatile.Read(ref Flags) & Canceled) != 0 ? NoToken : version;
    }

    private void OnCanceled(CancellationToken token)
    {
        // The registration is disposed before this entry is reused, so the wheel and version are this use's.
        TimerWheel? wheel = _wheel;
        if (!_core.TrySetCanceled(_core.Version, token) || wheel is null)
        {
            // Expiry or disposal won; the driver has unlinked the entry or is about to.
            return;
        }

        // Hand the entry (back) to the driver to unlink. DriverOwned is set again because expiry may have released
        // it already (collected, but not yet fired when we won); while we are in this callback the consumer cannot
        // have let go (it disposes the registration first, which waits for us).
        int flags = Interlocked.Or(ref Flags, Canceled | Enqueued | DriverOwned);
        if ((flags & Enqueued) == 0 && !wheel.TryPushPending(this))
        {
            // The wheel was disposed. Its Dispose removed everything under the lock; once we hold the lock it is
            // done, and nothing references the entry any more.
            lock (wheel.SyncRoot)
            {
                Interlocked.And(ref Flags, ~(Enqueued | DriverOwned));
            }
        }
    }

    /// <summary>The driver lets go of an entry that is neither linked nor enqueued; pools it if the consumer already has.</summary>
    private void ReleaseByDriver()
    {
        int flags = Volatile.Read(ref Flags);
        while (true)
        {
            if ((flags & Enqueued) != 0)
            {
                // A cancellation pushed it again; the driver lets go when it reconciles that.
                return;
            }

            int seen = Interlocked.CompareExchange(ref Flags, flags & ~DriverOwned, flags);
            if (seen == flags)
            {
                break;
            }

            flags = seen;
        }

        if ((flags & ConsumerDone) != 0)
        {
            ReturnToPool();
        }
    }

    /// <summary>The consumer lets go of a reset entry; pools it if the driver already has.</summary>
    private void ReleaseByConsumer()
    {
        int flags = Interlocked.Or(ref Flags, ConsumerDone);
        if ((flags & DriverOwned) == 0)
        {
            ReturnToPool();
        }
    }

    private void ReturnToPool()
    {
        _wheel = null;
        Flags = 0;
        s_pool.Return(this);
    }

    public ValueTaskSourceStatus GetStatus(short token) => _core.GetStatus(token);

    public void OnCompleted(Action<object?> continuation, object? state, short token, ValueTaskSourceOnCompletedFlags flags) =>
        _core.OnCompleted(continuation, state, token, flags);

    public void GetResult(short token)
    {
        // A stale token (a second await) or an early call throws here, before anything is touched.
        if (_core.GetStatus(token) == ValueTaskSourceStatus.Pending)
        {
            _core.GetResult(token);
        }

        // Wait out a cancellation callback that may still be running before this entry can be reused.
        _registration.Dispose();
        _registration = default;
        try
        {
            _core.GetResult(token);
        }
        finally
        {
            if (_core.TryReset(token))
            {
                ReleaseByConsumer();
            }
        }
    }

    void IThreadPoolWorkItem.Execute() => _core.InvokeContinuation();
}
