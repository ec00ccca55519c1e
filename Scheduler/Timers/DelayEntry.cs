using System.Threading.Tasks.Sources;
using Scheduler.Sources;

namespace Scheduler.Timers;

/// <summary>
/// One <see cref="TimerWheel.DelayAsync"/> operation: a wheel entry and an <see cref="IValueTaskSource"/> built on
/// <see cref="WakerCore{TResult}"/>, pooled, so a delay allocates nothing in steady state. The core queues the
/// entry itself as the work item that resumes the awaiter on its own worker (or context, or the ThreadPool).
/// </summary>
/// <remarks>
/// Three producers race to complete a use: the driver (expiry), the cancellation callback and the wheel's
/// <see cref="TimerWheel.Dispose"/>. Each completes with the version of the use it belongs to, so exactly one
/// wins and a late one never touches the next use. Unlinking happens under the wheel lock before completing.
/// The cancellation registration is disposed (waiting out a running callback) before the entry is reset and
/// pooled, so a callback can never act on a later use.
/// </remarks>
internal sealed class DelayEntry : TimerEntry, IValueTaskSource, IThreadPoolWorkItem
{
    /// <summary>Entries kept for reuse after a burst; beyond this, completed entries are left to the GC.</summary>
    internal const int PoolCapacity = 1024;

    private static readonly Action<object?, CancellationToken> s_onCanceled = static (state, token) => ((DelayEntry)state!).OnCanceled(token);

    // The shared pooling toolkit: per-core slots plus a lock-free overflow, bounded (the 16-bit version wraps).
    private static readonly ValueTaskSourcePool<DelayEntry> s_pool = new(static () => new DelayEntry(), PoolCapacity);

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

        long now = wheel.GetTimestamp();
        lock (wheel.SyncRoot)
        {
            if (wheel.IsDisposed)
            {
                entry._wheel = null;
                s_pool.Return(entry);
                TimerWheel.ThrowDisposed();
            }

            if (delay == Timeout.InfiniteTimeSpan)
            {
                wheel.InsertInfiniteLocked(entry);
            }
            else
            {
                wheel.InsertLocked(entry, wheel.DeadlineAfter(now, delay), now);
            }
        }

        // Registered after linking: a token canceled meanwhile runs the callback right here, which unlinks and
        // completes the entry. Nobody can consume the result (and so dispose this registration) before we return.
        if (cancellationToken.CanBeCanceled)
        {
            entry._registration = cancellationToken.UnsafeRegister(s_onCanceled, entry);
        }

        return new ValueTask(entry, version);
    }

    internal override long OnExpired(TimerWheel wheel, long nowTimestamp) => _core.Version;

    internal override void Fire(long token) => _core.TrySetResult((short)token, true);

    internal override long OnRemovedByDispose() => _core.Version;

    internal override void OnWheelDisposed(long token) =>
        _core.TrySetException((short)token, new ObjectDisposedException(nameof(TimerWheel), "The TimerWheel was disposed while the delay was pending."));

    private void OnCanceled(CancellationToken token)
    {
        // The registration is disposed before this entry is reused, so the wheel and version are this use's.
        TimerWheel? wheel = _wheel;
        short version = _core.Version;
        if (wheel is not null)
        {
            lock (wheel.SyncRoot)
            {
                wheel.RemoveLocked(this);
            }
        }

        _core.TrySetCanceled(version, token);
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
                _wheel = null;
                s_pool.Return(this);
            }
        }
    }

    void IThreadPoolWorkItem.Execute() => _core.InvokeContinuation();
}
