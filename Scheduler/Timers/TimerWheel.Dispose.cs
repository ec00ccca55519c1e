using Scheduler.Sources;

namespace Scheduler.Timers;

public sealed partial class TimerWheel
{
    // The first Dispose's thread until that call has done everything it owes (then null), and whether it has: later
    // calls wait for it under the lock (Monitor.Wait; the first one pulses all). Guarded by the lock.
    private Thread? _disposingThread;
    private bool _disposeCompleted;

    /// <summary>
    /// Stops the wheel: the driver thread exits, pending <see cref="DelayAsync"/> operations complete with
    /// <see cref="ObjectDisposedException"/>, timers created by <see cref="CreateTimer"/> never fire again (no callback
    /// starts once this has returned, not even one queued before), and
    /// <see cref="DelayAsync"/>, <see cref="CreateTimer"/> and a timer's <see cref="ITimer.Change"/> throw
    /// <see cref="ObjectDisposedException"/>; the clock (<see cref="GetTimestamp"/>, <see cref="TimestampFrequency"/> and
    /// <see cref="TimeProvider"/>'s helpers built on them) and <see cref="TickDuration"/> keep working, and a timer's
    /// <c>Dispose</c>/<c>DisposeAsync</c> complete at once.
    /// Idempotent: a call made while another is under way returns once that one has finished, except from a thread
    /// the first call is itself waiting for (the driver thread, or the first call's own thread, where a continuation
    /// it runs inline may dispose again), which returns at once.
    /// </summary>
    public void Dispose()
    {
        var removed = new ExpiredTimers();
        lock (_lock)
        {
            if (_disposed)
            {
                WaitForDisposalLocked();
                return;
            }

            _disposed = true;
            _disposingThread = Thread.CurrentThread;

            // Close the pending-changes stack first: a change pushed before this point is reconciled into the
            // wheel here and removed with everything else below; one attempted after it fails to push and its
            // caller reports the disposal itself. Nothing can be stranded in between.
            ClosePendingLocked();
            _wheel.RemoveAll(removed);
            _delayWheel.RemoveAll(removed);
            TakeDelaysIntoBatchLocked(removed);
            Monitor.PulseAll(_lock);
        }

        try
        {
            if (_driver is not null && _driver != Thread.CurrentThread)
            {
                _driver.Join();
            }

            // The timers unlinked above need nothing more: a timer of a disposed wheel simply never fires again, and
            // its Change reports the disposal. Completing a delay only queues its continuation (or posts it to a
            // captured context: user code), so that happens outside the lock.
            CompleteDelays(removed, DelayWord.Disposed);
        }
        finally
        {
            lock (_lock)
            {
                _disposeCompleted = true;
                _disposingThread = null;
                Monitor.PulseAll(_lock);
            }
        }
    }

    /// <summary>
    /// A later Dispose: waits until the first one has completed the pending delays, so that whichever call returns,
    /// the wheel is fully disposed. Not on a thread the first call may be waiting for: its own (a continuation it posts
    /// to a captured context may run inline and dispose again) or one that runs no user code (the driver, which it
    /// joins; a host such as the I/O reactor). Caller holds the lock.
    /// </summary>
    private void WaitForDisposalLocked()
    {
        if (_disposingThread == Thread.CurrentThread || WakerDispatch.CurrentThreadRunsNoUserCode)
        {
            return;
        }

        // Monitor.Wait on the wheel lock: the driver's pulses (single) may wake us instead of it, which the loop
        // absorbs; the driver no longer waits once the wheel is disposed.
        while (!_disposeCompleted)
        {
            Monitor.Wait(_lock);
        }
    }
}
