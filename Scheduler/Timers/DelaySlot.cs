using System.Runtime.CompilerServices;

namespace Scheduler.Timers;

/// <summary>
/// One <see cref="TimerWheel.DelayAsync"/> operation: 40 bytes inside a <see cref="DelayChunk"/>. Everything a pending
/// delay needs is here or in one atomic word (<see cref="Word"/>, laid out by <see cref="DelayWord"/>); what only some
/// delays need (a cancellation registration, an execution context, a second scheduling context) lives in a per-slot
/// <see cref="DelaySideState"/> created the first time a slot needs it and reused after that.
/// </summary>
/// <remarks>
/// Slots are addressed by an int handle (chunk index × 64 + slot index), never by reference, so the wheel links
/// them with int fields: no object header, no 8-byte references for links.
/// </remarks>
internal struct DelaySlot
{
    /// <summary>The awaiter's continuation (written by <c>OnCompleted</c> before it publishes the continuation flag).</summary>
    internal Action<object?>? Continuation;

    /// <summary>The awaiter's continuation state.</summary>
    internal object? ContinuationState;

    /// <summary>The first wheel tick at whose start the deadline has passed (the deadline rounded up to a tick).</summary>
    internal long DueTick;

    /// <summary>Generation, status, ownership and dispatch bits, changed only atomically (see <see cref="DelayWord"/>).</summary>
    internal int Word;

    /// <summary>The next slot of the wheel list (<see cref="DelayWheel.Nil"/> at the end), or of the slab's free list.</summary>
    internal int Next;

    /// <summary>The previous slot of the wheel list, <c>-(list + 1)</c> for a list's first slot, <see cref="DelayWheel.NotLinked"/> when in no list.</summary>
    internal int Prev;

    /// <summary>The next slot on the wheel's pending-changes stack (separate: a linked slot can be waiting there to be unlinked).</summary>
    internal int PendingNext;
}

/// <summary>64 slots inline in their chunk: one object header per 64 delays.</summary>
[InlineArray(DelayChunk.SlotsPerChunk)]
internal struct DelaySlots
{
    private DelaySlot _first;
}

/// <summary>
/// The layout of <see cref="DelaySlot.Word"/>. One word, so that the version check and every ownership decision
/// of a race is a single compare-and-swap.
/// </summary>
/// <remarks>
/// <code>
/// bits  0-9   generation (the low 10 bits of the ValueTask token; the slot index is the high 6)
/// bit  10     status: Pending, Completed
/// bit  11     Registering: held by whoever works on the continuation fields: OnCompleted of a pending use writing
///             them, the producer that completed a use with a registered continuation reading it to dispatch it, or
///             the consumer (GetResult) clearing the use before its reset
/// bits 12-13  outcome: Succeeded, Canceled, Disposed
/// bit  14     a continuation is registered
/// bit  15     Enqueued: on the pending-changes stack (or about to be)
/// bit  16     CancelRequested: the cancellation won; the driver must unlink the slot
/// bit  17     WheelOwned: the wheel references the slot (linked, enqueued, or about to be)
/// bit  18     BatchOwned: a batch of the driver (expiry or disposal) holds the slot to complete it
/// bit  19     ConsumerDone: the awaiter has consumed this use and reset the slot
/// bit  20     Infinite: no deadline; linked on the list of infinite waits
/// bits 21-22  where the continuation runs: the ThreadPool, the chunk's shared context, the slot's side context
/// bits 23-31  the awaiting worker's index (511: none)
/// </code>
/// A slot goes back to the free list when the consumer and both driver-side owners have let go, whichever is last.
/// </remarks>
internal static class DelayWord
{
    internal const int GenerationBits = 10;
    internal const int GenerationMask = (1 << GenerationBits) - 1;

    internal const int Completed = 1 << 10;
    internal const int StatusMask = Completed;

    // Set by OnCompleted (pending use), by the completing producer (registered continuation) or by the consumer, and
    // cleared by the same one (the consumer's reset clears it); each of them refuses while another holds it. Neither a
    // status nor an owner: a producer completes a slot OnCompleted holds as any other pending one.
    internal const int Registering = 1 << 11;

    internal const int Canceled = 1 << 12;
    internal const int Disposed = 2 << 12;
    internal const int OutcomeMask = 3 << 12;

    internal const int ContinuationRegistered = 1 << 14;
    internal const int Enqueued = 1 << 15;
    internal const int CancelRequested = 1 << 16;
    internal const int WheelOwned = 1 << 17;
    internal const int BatchOwned = 1 << 18;
    internal const int ConsumerDone = 1 << 19;
    internal const int Infinite = 1 << 20;

    internal const int ContextShared = 1 << 21;
    internal const int ContextSide = 2 << 21;
    internal const int ContextMask = 3 << 21;

    internal const int WorkerShift = 23;
    internal const int NoWorker = 0x1FF;
    internal const int WorkerMask = unchecked((int)(0x1FFu << WorkerShift));

    /// <summary>What a consumer's reset keeps: the driver side's ownership and what it needs to unlink the slot.</summary>
    internal const int KeptByReset = Enqueued | CancelRequested | WheelOwned | BatchOwned | Infinite;

    internal static int Generation(int word) => word & GenerationMask;

    internal static bool IsCompleted(int word) => (word & StatusMask) == Completed;

    internal static int NextGeneration(int word) => (word + 1) & GenerationMask;

    internal static int WorkerBits(int workerIndex) =>
        (workerIndex < 0 || workerIndex >= NoWorker ? NoWorker : workerIndex) << WorkerShift;

    internal static int WorkerIndex(int word)
    {
        int index = (int)((uint)word >> WorkerShift);
        return index == NoWorker ? -1 : index;
    }
}
