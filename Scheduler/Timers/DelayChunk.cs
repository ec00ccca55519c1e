using System.Diagnostics;
using System.Runtime.CompilerServices;
using System.Threading.Tasks.Sources;
using Scheduler.Sources;

namespace Scheduler.Timers;

/// <summary>
/// 64 <see cref="DelaySlot"/>s and the <see cref="IValueTaskSource"/> behind every <see cref="TimerWheel.DelayAsync"/>
/// that uses one of them: the <see cref="ValueTask"/> token carries the slot index (high 6 bits) and the slot's
/// generation (low 10 bits).
/// </summary>
/// <remarks>
/// <para>
/// The operation protocol of <see cref="WakerCore{TResult}"/> (version-checked completion, exactly one winner, the
/// continuation queued to the awaiting worker and never run inline) folded into the slot's one atomic word, together
/// with the ownership protocol of a wheel entry. Three producers race to complete a use: the driver (expiry), the
/// cancellation callback and the wheel's disposal; each completes with the generation of the use it belongs to.
/// </para>
/// <para>
/// The slot goes back to the free list only when everyone has let go: the consumer (after <see cref="GetResult"/>), the
/// wheel (once the slot is neither linked nor enqueued) and a driver batch (once it has fired). Whichever is last frees
/// it, in the same compare-and-swap that releases its own part, so no producer can ever reach a later use of the slot.
/// The cancellation registration is disposed (waiting out a callback running on another thread) before the consumer
/// lets go; a callback that completes a use leaves the slot alone once it has queued the continuation, which may run
/// and consume the use inline on the callback's own thread.
/// </para>
/// </remarks>
internal sealed class DelayChunk : IValueTaskSource
{
    internal const int IndexBits = 6;
    internal const int SlotsPerChunk = 1 << IndexBits;
    internal const int IndexMask = SlotsPerChunk - 1;

    private static readonly Action<object?, CancellationToken> s_onCanceled = static (state, token) => ((DelaySideState)state!).OnCanceled();

    private readonly DelaySlab _slab;
    private readonly int _firstHandle;
    private DelaySlots _slots;

    // The scheduling context of the first awaiter that needed one; later awaiters under the same context (one
    // WorkStealingTaskScheduler per process, typically) refer to it with a bit instead of a reference per slot.
    private object? _sharedContext;

    // Per-slot state that only some delays need, created on first need and reused by later uses of the slot.
    private DelaySideState?[]? _side;

    public DelayChunk(DelaySlab slab, int firstHandle)
    {
        _slab = slab;
        _firstHandle = firstHandle;
        for (int index = 0; index < SlotsPerChunk; index++)
        {
            _slots[index].Next = DelayWheel.Nil;
            _slots[index].Prev = DelayWheel.NotLinked;
        }
    }

    /// <summary>Slot <paramref name="index"/> of this chunk.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public ref DelaySlot Slot(int index) => ref _slots[index];

    /// <summary>Starts a delay of <paramref name="delay"/> (positive, or infinite) in a slot of <paramref name="slab"/>.</summary>
    internal static ValueTask Start(DelaySlab slab, TimeSpan delay, CancellationToken cancellationToken)
    {
        TimerWheel wheel = slab.Wheel;
        int handle = slab.Rent();
        DelayChunk chunk = slab.ChunkOf(handle);
        int index = handle & IndexMask;
        ref DelaySlot slot = ref chunk.Slot(index);
        int generation = DelayWord.Generation(slot.Word);

        bool pushed;
        if (delay == Timeout.InfiniteTimeSpan)
        {
            slot.Word = generation | DelayWord.Enqueued | DelayWord.WheelOwned | DelayWord.Infinite;
            pushed = wheel.TryPushDelay(handle);
        }
        else
        {
            // The due tick travels in the (not yet linked) slot; the driver links it by this value. The push's CAS
            // publishes these writes.
            long now = wheel.GetTimestamp();
            long deadline = wheel.DeadlineAfter(now, delay);
            slot.DueTick = wheel.DueTickOf(deadline);
            slot.Word = generation | DelayWord.Enqueued | DelayWord.WheelOwned;
            pushed = wheel.TryPushDelay(handle, now, deadline);
        }

        if (!pushed)
        {
            // Never published: nobody else can reference the slot.
            slot.Word = generation;
            slab.Free(handle);
            TimerWheel.ThrowDisposed();
        }

        // Registered after pushing: a token canceled meanwhile runs the callback right here, which completes the
        // slot and marks it for unlinking. Nobody can consume the result (and so dispose this registration) before we return.
        if (cancellationToken.CanBeCanceled)
        {
            DelaySideState side = chunk.GetOrCreateSide(index);
            side.Token = cancellationToken;
            side.Registration = cancellationToken.UnsafeRegister(s_onCanceled, side);
        }

        return new ValueTask(chunk, TokenOf(index, generation));
    }

    public ValueTaskSourceStatus GetStatus(short token)
    {
        int word = Volatile.Read(ref Slot(IndexOf(token)).Word);

        // A stale token reports a fault rather than throwing (as WakerCore.GetStatus does, for the same reason): the
        // BCL's AsTask callback calls GetStatus outside its try, and a direct await of the same ValueTask may have
        // consumed the delay first. Its GetResult, inside the try, then throws InvalidOperationException.
        if (IsStaleToken(word, token))
        {
            return ValueTaskSourceStatus.Faulted;
        }

        return !DelayWord.IsCompleted(word) ? ValueTaskSourceStatus.Pending
            : (word & DelayWord.OutcomeMask) switch
            {
                0 => ValueTaskSourceStatus.Succeeded,
                DelayWord.Canceled => ValueTaskSourceStatus.Canceled,
                _ => ValueTaskSourceStatus.Faulted,
            };
    }

    public void OnCompleted(Action<object?> continuation, object? state, short token, ValueTaskSourceOnCompletedFlags flags)
    {
        ArgumentNullException.ThrowIfNull(continuation);
        int index = IndexOf(token);
        ref DelaySlot slot = ref Slot(index);
        int word = Volatile.Read(ref slot.Word);
        if (LosesRegistration(word, token))
        {
            WakerDispatch.QueueLosingContinuation(continuation, state, flags);
            return;
        }

        // Everything that goes into the word is worked out first; nothing of the slot is written before the claim.
        object? context = WakerDispatch.CaptureSchedulingContext(flags, out int workerIndex);
        int bits = DelayWord.ContinuationRegistered | DelayWord.WorkerBits(workerIndex);
        if (context is not null)
        {
            object shared = _sharedContext ?? Interlocked.CompareExchange(ref _sharedContext, context, null) ?? context;
            bits |= ReferenceEquals(shared, context) ? DelayWord.ContextShared : DelayWord.ContextSide;
        }

        ExecutionContext? executionContext = (flags & ValueTaskSourceOnCompletedFlags.FlowExecutionContext) != 0 ? ExecutionContext.Capture() : null;

        // Claim the registration before writing the continuation: the fields are shared, and a second await racing
        // this one must fail without overwriting the first one's (which would then never run, the loser's running
        // instead). Pending: claim with Registering and publish the continuation flag below. Completed: the producer
        // is done and left the dispatch to whoever registers, so claim the continuation flag outright (one CAS) and
        // write nothing to the slot: a direct read racing this await may reset the slot at any moment, and our writes
        // would then land in its next use.
        while (true)
        {
            int claimed = word | (DelayWord.IsCompleted(word) ? bits : DelayWord.Registering);
            int seen = Interlocked.CompareExchange(ref slot.Word, claimed, word);
            if (seen == word)
            {
                word = claimed;
                break;
            }

            if (LosesRegistration(seen, token))
            {
                WakerDispatch.QueueLosingContinuation(continuation, state, flags);
                return;
            }

            word = seen;
        }

        if (DelayWord.IsCompleted(word))
        {
            WakerDispatch.Dispatch(DelayContinuation.Rent(continuation, state, executionContext), context, workerIndex);
            return;
        }

        if ((bits & DelayWord.ContextMask) == DelayWord.ContextSide)
        {
            GetOrCreateSide(index).Context = context;
        }

        if (executionContext is not null)
        {
            GetOrCreateSide(index).ExecutionContext = executionContext;
        }

        slot.ContinuationState = state;
        slot.Continuation = continuation;

        // Publish: Registering -> registered, with a CAS (a full fence: the writes above are visible to whoever sees
        // the flag). Meanwhile producers may complete the use and move its ownership, but nobody resets it (the
        // consumer refuses while Registering is set), so the generation cannot change.
        while (true)
        {
            int seen = Interlocked.CompareExchange(ref slot.Word, (word & ~DelayWord.Registering) | bits, word);
            if (seen == word)
            {
                break;
            }

            Debug.Assert((seen & (DelayWord.GenerationMask | DelayWord.Registering)) == (word & (DelayWord.GenerationMask | DelayWord.Registering)));
            word = seen;
        }

        if (DelayWord.IsCompleted(word))
        {
            // The producer finished before our flag landed (it saw only Registering), so it left the dispatch to us.
            // From our own copies: once the flag is published a racing direct read may reset the slot.
            WakerDispatch.Dispatch(DelayContinuation.Rent(continuation, state, executionContext), context, workerIndex);
        }
    }

    public void GetResult(short token)
    {
        int index = IndexOf(token);
        ref DelaySlot slot = ref Slot(index);
        int word = Volatile.Read(ref slot.Word);

        // Claim the use before touching anything: (completed, nobody holding Registering) -> Registering held by us.
        // A stale token (a second await) or an early call throws here. So does a reader racing another consumer: a
        // second await registering its continuation (claimed while the use was pending), the producer reading the
        // registered one to dispatch it, or a second direct read in the cleanup below. Cleaning up or resetting the
        // slot under any of them would let late writes land in a later use of the slot, hand out a cleared
        // continuation, or tear the cancellation registration that the other is disposing.
        while (true)
        {
            ValidateToken(word, token);
            if (!DelayWord.IsCompleted(word))
            {
                PooledSourceErrors.ThrowNotCompleted();
            }

            if ((word & DelayWord.Registering) != 0)
            {
                PooledSourceErrors.ThrowConcurrentConsumer();
            }

            int seen = Interlocked.CompareExchange(ref slot.Word, word | DelayWord.Registering, word);
            if (seen == word)
            {
                word |= DelayWord.Registering;
                break;
            }

            word = seen;
        }

        // Wait out a cancellation callback that may still be running before the slot can be reused, and drop every
        // reference so a pooled slot pins nothing. All before the reset: once it is done the slot may be reused at once.
        CancellationToken canceledToken = default;
        DelaySideState? side = _side?[index];
        if (side is not null)
        {
            canceledToken = side.Token;
            side.Registration.Dispose();
            side.Registration = default;
            side.Token = default;
            side.ExecutionContext = null;
            side.Context = null;
        }

        slot.Continuation = null;
        slot.ContinuationState = null;
        int outcome = word & DelayWord.OutcomeMask;

        // Reset and let go in one step; if nobody on the driver side still holds the slot, it is free.
        bool free;
        while (true)
        {
            // Held: only the driver side's ownership bits can change meanwhile.
            Debug.Assert(DelayWord.Generation(word) == (token & DelayWord.GenerationMask) && DelayWord.IsCompleted(word));

            free = (word & (DelayWord.WheelOwned | DelayWord.BatchOwned)) == 0;
            int next = free
                ? DelayWord.NextGeneration(word)
                : DelayWord.NextGeneration(word) | DelayWord.ConsumerDone | (word & DelayWord.KeptByReset);
            int seen = Interlocked.CompareExchange(ref slot.Word, next, word);
            if (seen == word)
            {
                break;
            }

            word = seen;
        }

        if (free)
        {
            _slab.Free(_firstHandle + index);
        }

        switch (outcome)
        {
            case DelayWord.Canceled:
                throw new OperationCanceledException(canceledToken);
            case DelayWord.Disposed:
                throw new ObjectDisposedException(nameof(TimerWheel), "The TimerWheel was disposed while the delay was pending.");
        }
    }

    /// <summary>
    /// Completes use <paramref name="generation"/> of slot <paramref name="index"/> with <paramref name="outcome"/>
    /// (0, <see cref="DelayWord.Canceled"/> or <see cref="DelayWord.Disposed"/>) if it is still that use and pending,
    /// and queues its continuation if one is registered. Exactly one producer wins.
    /// </summary>
    internal bool TryComplete(int index, int generation, int outcome)
    {
        if (!TryClaimCompletion(index, generation, outcome, out int completed, out _))
        {
            return false;
        }

        if ((completed & DelayWord.ContinuationRegistered) != 0)
        {
            Dispatch(index, completed);
        }

        return true;
    }

    /// <summary>
    /// The winning compare-and-swap of a completion: marks use <paramref name="generation"/> completed with
    /// <paramref name="bits"/> (its outcome, and for a cancellation the request to unlink) if it is still that use and
    /// pending. <paramref name="completed"/> is the word it wrote, <paramref name="previous"/> the one it replaced. The
    /// caller dispatches a registered continuation (<see cref="Dispatch"/>) once it is done with the slot: the
    /// continuation may consume the use at once, on this very thread.
    /// </summary>
    private bool TryClaimCompletion(int index, int generation, int bits, out int completed, out int previous)
    {
        ref DelaySlot slot = ref Slot(index);
        int word = Volatile.Read(ref slot.Word);
        while (true)
        {
            // A pending use always has a driver-side owner; a free or reset slot has none (or ConsumerDone).
            if (DelayWord.Generation(word) != generation
                || (word & (DelayWord.StatusMask | DelayWord.ConsumerDone)) != 0
                || (word & (DelayWord.WheelOwned | DelayWord.BatchOwned)) == 0)
            {
                completed = previous = 0;
                return false;
            }

            // With a continuation registered, Registering is held until Dispatch has read it (a direct read racing the
            // await refuses meanwhile).
            completed = word | DelayWord.Completed | bits
                | ((word & DelayWord.ContinuationRegistered) != 0 ? DelayWord.Registering : 0);
            int seen = Interlocked.CompareExchange(ref slot.Word, completed, word);
            if (seen == word)
            {
                previous = word;
                return true;
            }

            word = seen;
        }
    }

    /// <summary>
    /// The driver takes slot <paramref name="index"/>, just unlinked because it is due (or because the wheel is being
    /// disposed), from the wheel into a batch. Returns false when a cancellation has already won: the slot is then
    /// enqueued for unlinking, and whoever handles that releases it. Caller holds the wheel lock.
    /// </summary>
    internal bool TryMoveToBatch(int index, out int generation)
    {
        ref DelaySlot slot = ref Slot(index);
        int word = Volatile.Read(ref slot.Word);
        while ((word & DelayWord.CancelRequested) == 0)
        {
            int seen = Interlocked.CompareExchange(ref slot.Word, (word & ~DelayWord.WheelOwned) | DelayWord.BatchOwned, word);
            if (seen == word)
            {
                generation = DelayWord.Generation(word);
                return true;
            }

            word = seen;
        }

        generation = 0;
        return false;
    }

    /// <summary>The wheel lets go of slot <paramref name="index"/>, which is neither linked nor enqueued; frees it if it was the last owner.</summary>
    internal void ReleaseFromWheel(int index) => Release(index, DelayWord.WheelOwned);

    /// <summary>A driver batch lets go of slot <paramref name="index"/> after firing it; frees it if it was the last owner.</summary>
    internal void ReleaseFromBatch(int index) => Release(index, DelayWord.BatchOwned);

    /// <summary>The cancellation callback of the use that slot <paramref name="index"/> serves now.</summary>
    internal void OnCanceled(int index)
    {
        // The registration is disposed before the slot is reused, so the generation read here is this use's.
        ref DelaySlot slot = ref Slot(index);

        // Complete and hand the slot (back) to the wheel to unlink in one step. WheelOwned is set again because expiry
        // may have moved it to a batch already; setting it in the winning CAS keeps the slot owned from that moment, so
        // a batch letting go meanwhile can never free it under us.
        const int cancel = DelayWord.Canceled | DelayWord.CancelRequested | DelayWord.Enqueued | DelayWord.WheelOwned;
        if (!TryClaimCompletion(index, DelayWord.Generation(Volatile.Read(ref slot.Word)), cancel, out int completed, out int previous))
        {
            // Expiry or disposal won; the driver has unlinked the slot or is about to.
            return;
        }

        TimerWheel wheel = _slab.Wheel;
        if ((previous & DelayWord.Enqueued) == 0 && !wheel.TryPushDelay(_firstHandle + index))
        {
            // The wheel was disposed. Its Dispose removed everything under the lock; once we hold the lock it is
            // done, and nothing links the slot any more.
            lock (wheel.SyncRoot)
            {
                Interlocked.And(ref slot.Word, ~(DelayWord.Enqueued | DelayWord.WheelOwned));
            }
        }

        // Last, once nothing here touches the slot: the continuation may run inline (a SynchronizationContext's Post or
        // a TaskScheduler's QueueTask on this thread) and consume the use, and disposing the registration does not wait
        // for a callback running on its own thread, so from here on the slot may be reset, freed and reused.
        if ((completed & DelayWord.ContinuationRegistered) != 0)
        {
            Dispatch(index, completed);
        }
    }

    private void Release(int index, int owner)
    {
        ref DelaySlot slot = ref Slot(index);
        int word = Volatile.Read(ref slot.Word);
        while (true)
        {
            if (owner == DelayWord.WheelOwned && (word & DelayWord.Enqueued) != 0)
            {
                // A cancellation pushed it again; the wheel lets go when it reconciles that.
                return;
            }

            int next = word & ~owner;
            bool free = (next & (DelayWord.ConsumerDone | DelayWord.WheelOwned | DelayWord.BatchOwned)) == DelayWord.ConsumerDone;
            if (free)
            {
                next = DelayWord.Generation(word);
            }

            int seen = Interlocked.CompareExchange(ref slot.Word, next, word);
            if (seen == word)
            {
                if (free)
                {
                    _slab.Free(_firstHandle + index);
                }

                return;
            }

            word = seen;
        }
    }

    /// <summary>Queues the continuation of slot <paramref name="index"/> (completed, with the continuation registered: <paramref name="word"/>).</summary>
    private void Dispatch(int index, int word)
    {
        ref DelaySlot slot = ref Slot(index);
        Debug.Assert(slot.Continuation is not null, "Dispatch happens only after a continuation was published.");

        // Read everything first: once queued, the continuation may run, reset the slot and free it.
        DelaySideState? side = _side?[index];
        object? context = (word & DelayWord.ContextMask) switch
        {
            DelayWord.ContextShared => _sharedContext,
            DelayWord.ContextSide => side!.Context,
            _ => null,
        };
        DelayContinuation workItem = DelayContinuation.Rent(slot.Continuation!, slot.ContinuationState, side?.ExecutionContext);

        // Read: let a reader in (the continuation's own, or a racing direct one, which then wins the outcome).
        Interlocked.And(ref slot.Word, ~DelayWord.Registering);
        WakerDispatch.Dispatch(workItem, context, DelayWord.WorkerIndex(word));
    }

    /// <summary>For tests: whether a consumer (a registration or a read) holds the slot of <paramref name="token"/> right now.</summary>
    internal bool SlotIsHeldByAConsumerForTests(short token) => (Volatile.Read(ref Slot(IndexOf(token)).Word) & DelayWord.Registering) != 0;

    /// <summary>For tests: whether the slot of <paramref name="token"/> still holds a continuation (a reset slot holds none).</summary>
    internal bool SlotHoldsContinuationForTests(short token)
    {
        int index = IndexOf(token);
        DelaySideState? side = _side?[index];
        return Slot(index).Continuation is not null || Slot(index).ContinuationState is not null
            || side?.ExecutionContext is not null || side?.Context is not null;
    }

    private DelaySideState GetOrCreateSide(int index)
    {
        DelaySideState?[] sides = _side ?? Interlocked.CompareExchange(ref _side, new DelaySideState?[SlotsPerChunk], null) ?? _side!;

        // Only the slot's current use creates its side state (Start, then the one OnCompleted that claimed the
        // registration: never concurrently).
        return sides[index] ??= new DelaySideState(this, index);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static short TokenOf(int index, int generation) => (short)((index << DelayWord.GenerationBits) | generation);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static int IndexOf(short token) => (ushort)token >> DelayWord.GenerationBits;

    private static void ValidateToken(int word, short token)
    {
        if (IsStaleToken(word, token))
        {
            PooledSourceErrors.ThrowStaleToken();
        }
    }

    /// <summary>Whether <paramref name="token"/> no longer names the slot's current use (another generation, consumed, or free).</summary>
    private static bool IsStaleToken(int word, short token) =>
        DelayWord.Generation(word) != (token & DelayWord.GenerationMask) || (word & DelayWord.ConsumerDone) != 0
        || (word & (DelayWord.WheelOwned | DelayWord.BatchOwned | DelayWord.StatusMask)) == 0;

    /// <summary>
    /// A stale token, or a continuation already registered or being registered: the delay is awaited twice. The losing
    /// continuation then runs on its own (<see cref="WakerDispatch.QueueLosingContinuation"/>) and its read throws.
    /// </summary>
    private static bool LosesRegistration(int word, short token) =>
        IsStaleToken(word, token) || (word & (DelayWord.ContinuationRegistered | DelayWord.Registering)) != 0;
}
