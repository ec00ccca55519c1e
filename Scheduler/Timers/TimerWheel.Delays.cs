using System.Diagnostics.CodeAnalysis;

namespace Scheduler.Timers;

// The driver's side of DelayAsync: the slots users push (DelayChunk.Start, DelayChunk.OnCanceled) are linked into or
// unlinked from the delay wheel here, under the wheel lock; due slots are moved into a batch and completed outside it.
public sealed partial class TimerWheel
{
    private readonly DelaySlab _delays;
    private readonly DelayWheel _delayWheel;

    /// <summary>Slots the wheel's delay slab has allocated (its high-water mark, rounded up to 64). For tests.</summary>
    internal int DelayCapacity => _delays.Capacity;

    /// <summary>
    /// Pushes delay <paramref name="handle"/>, which the caller has just marked as enqueued, for a change with no
    /// deadline of its own (a cancel, an infinite wait). Lock-free. False, without pushing, once the wheel is disposed.
    /// </summary>
    internal bool TryPushDelay(int handle)
    {
        if (!_delays.TryPushPending(handle, out bool wasEmpty))
        {
            return false;
        }

        AfterPush(wasEmpty);
        return true;
    }

    /// <summary>Pushes delay <paramref name="handle"/> for an arm due at <paramref name="deadlineTimestamp"/>, computed from <paramref name="nowTimestamp"/>.</summary>
    internal bool TryPushDelay(int handle, long nowTimestamp, long deadlineTimestamp)
    {
        if (!_delays.TryPushPending(handle, out _))
        {
            return false;
        }

        AfterArmPush(nowTimestamp, deadlineTimestamp);
        return true;
    }

    /// <summary>Links or unlinks every delay popped off the pending-changes stack (chained from <paramref name="handle"/>). Caller holds the lock.</summary>
    private void ReconcileDelaysLocked(int handle, long nowTimestamp)
    {
        while (handle >= 0)
        {
            // Read the link before clearing Enqueued: after that a cancellation may push the slot again.
            ref DelaySlot slot = ref _delays.Slot(handle);
            int next = slot.PendingNext;
            int word = Interlocked.And(ref slot.Word, ~DelayWord.Enqueued);
            if ((word & DelayWord.CancelRequested) != 0)
            {
                _delayWheel.RemoveIfLinked(handle);
                _delays.ChunkOf(handle).ReleaseFromWheel(handle & DelayChunk.IndexMask);
            }
            else if ((word & DelayWord.Infinite) != 0)
            {
                _delayWheel.InsertInfinite(handle);
            }
            else
            {
                InsertDelayLocked(handle, ref slot, nowTimestamp);
            }

            handle = next;
        }
    }

    private void InsertDelayLocked(int handle, ref DelaySlot slot, long nowTimestamp)
    {
        slot.DueTick = _delayWheel.PrepareInsert(slot.DueTick, TickOf(nowTimestamp));
        _delayWheel.Insert(handle);
        WakeDriverIfEarlierLocked(slot.DueTick);
    }

    /// <summary>
    /// Moves the delays that <see cref="DelayWheel.Advance"/> or <see cref="DelayWheel.RemoveAll"/> put in
    /// <paramref name="batch"/> from the wheel's ownership to the batch's, each with its generation; drops those a
    /// cancellation has already completed. Caller holds the lock.
    /// </summary>
    private void TakeDelaysIntoBatchLocked(ExpiredTimers batch)
    {
        int i = 0;
        while (i < batch.DelayCount)
        {
            int handle = batch.GetDelay(i);
            if (_delays.ChunkOf(handle).TryMoveToBatch(handle & DelayChunk.IndexMask, out int generation))
            {
                batch.SetDelayGeneration(i, generation);
                i++;
            }
            else
            {
                batch.RemoveDelayAt(i);
            }
        }
    }

    /// <summary>Completes every delay of <paramref name="batch"/> with <paramref name="outcome"/> and lets go of it. Outside the lock.</summary>
    [SuppressMessage("Design", "CA1031:Do not catch general exception types", Justification = "The driver must survive; the exception is re-raised as unhandled on the ThreadPool.")]
    private void CompleteDelays(ExpiredTimers batch, int outcome)
    {
        for (int i = 0; i < batch.DelayCount; i++)
        {
            int handle = batch.GetDelay(i);
            DelayChunk chunk = _delays.ChunkOf(handle);
            int index = handle & DelayChunk.IndexMask;
            try
            {
                chunk.TryComplete(index, batch.GetDelayGeneration(i), outcome);
            }
            catch (Exception exception)
            {
                // Not expected: a context's Post or a scheduler's QueueTask that throws is dealt with where the
                // continuation is handed off (WakerDispatch.HandOff). Kept so that an unexpected failure (out of
                // memory renting the work item) costs this delay, not the driver or the rest of the batch.
                Unhandled.Raise(exception);
            }
            finally
            {
                chunk.ReleaseFromBatch(index);
            }
        }
    }
}
