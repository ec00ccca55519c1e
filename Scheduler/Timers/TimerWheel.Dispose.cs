using System.Diagnostics.CodeAnalysis;

namespace Scheduler.Timers;

public sealed partial class TimerWheel
{
    /// <summary>
    /// Stops the wheel: the driver thread exits, pending <see cref="DelayAsync"/> operations complete with
    /// <see cref="ObjectDisposedException"/>, timers created by <see cref="CreateTimer"/> never fire again (no callback
    /// starts once this has returned, not even one queued before), and
    /// further calls throw <see cref="ObjectDisposedException"/> (<see cref="GetTimestamp"/> keeps working).
    /// Idempotent.
    /// </summary>
    [SuppressMessage("Design", "CA1031:Do not catch general exception types", Justification = "Every pending entry must be told; a failure is re-raised as unhandled on the ThreadPool.")]
    public void Dispose()
    {
        var removed = new ExpiredTimers();
        lock (_lock)
        {
            if (_disposed)
            {
                return;
            }

            _disposed = true;

            // Close the pending-changes stack first: a change pushed before this point is reconciled into the
            // wheel here and removed with everything else below; one attempted after it fails to push and its
            // caller reports the disposal itself. Nothing can be stranded in between.
            ClosePendingLocked();
            _wheel.RemoveAll(removed);
            _delayWheel.RemoveAll(removed);
            TakeDelaysIntoBatchLocked(removed);
            for (int i = 0; i < removed.Count; i++)
            {
                removed.SetToken(i, removed[i].OnRemovedByDispose());
            }

            Monitor.PulseAll(_lock);
        }

        if (_driver is not null && _driver != Thread.CurrentThread)
        {
            _driver.Join();
        }

        // Delays first: completing one only queues its continuation, so nothing here can throw.
        CompleteDelays(removed, DelayWord.Disposed);
        for (int i = 0; i < removed.Count; i++)
        {
            try
            {
                removed[i].OnWheelDisposed(removed.GetToken(i));
            }
            catch (Exception exception)
            {
                ReportUnhandled(exception);
            }
        }
    }
}
