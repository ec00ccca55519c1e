namespace Scheduler.Timers;

public sealed partial class TimerWheel
{
    /// <summary>
    /// Completes after <paramref name="delay"/> has elapsed — never earlier as <see cref="System.Diagnostics.Stopwatch"/>
    /// measures it, and about one tick later at most plus scheduling noise — without allocating in steady state.
    /// </summary>
    /// <param name="delay">How long to wait; <see cref="TimeSpan.Zero"/> completes at once, <see cref="Timeout.InfiniteTimeSpan"/> waits for cancellation (or disposal).</param>
    /// <param name="cancellationToken">Cancels the wait: the timer is unlinked in O(1) and the await throws <see cref="OperationCanceledException"/> carrying this token.</param>
    /// <returns>
    /// A <see cref="ValueTask"/> to await once. Awaited on a <see cref="WorkStealingTaskScheduler"/> worker it resumes on that
    /// worker; otherwise in the captured context, or on the ThreadPool. It never resumes on the wheel's driver thread.
    /// </returns>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="delay"/> is negative and not <see cref="Timeout.InfiniteTimeSpan"/>.</exception>
    /// <exception cref="ObjectDisposedException">The wheel has been disposed (a delay pending at disposal completes with it too).</exception>
    public ValueTask DelayAsync(TimeSpan delay, CancellationToken cancellationToken = default)
    {
        if (delay < TimeSpan.Zero && delay != Timeout.InfiniteTimeSpan)
        {
            throw new ArgumentOutOfRangeException(nameof(delay), delay, "The delay must be zero or positive, or Timeout.InfiniteTimeSpan.");
        }

        ObjectDisposedException.ThrowIf(_disposed, this);
        if (cancellationToken.IsCancellationRequested)
        {
            return ValueTask.FromCanceled(cancellationToken);
        }

        if (delay == TimeSpan.Zero)
        {
            return default;
        }

        return DelayChunk.Start(_delays, delay, cancellationToken);
    }
}
