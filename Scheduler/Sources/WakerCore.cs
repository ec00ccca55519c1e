using System.Diagnostics;
using System.Diagnostics.CodeAnalysis;
using System.Runtime.CompilerServices;
using System.Runtime.ExceptionServices;
using System.Threading.Tasks.Sources;

namespace Scheduler.Sources;

/// <summary>
/// The reusable heart of an allocation-free awaitable: version tokens, a race-safe completion protocol and
/// owner-worker dispatch of the continuation. Embed it as a (non-readonly) field of a pooled class that
/// implements <see cref="IValueTaskSource{TResult}"/> and forward the interface members to it.
/// </summary>
/// <typeparam name="TResult">The result type of the operation.</typeparam>
/// <remarks>
/// <para>
/// Like <see cref="ManualResetValueTaskSourceCore{TResult}"/> with <c>RunContinuationsAsynchronously</c>
/// always on: a continuation never runs inline on the thread that completes the operation. Where it runs:
/// awaited on a worker of a <see cref="WorkStealingTaskScheduler"/> (or under one as
/// <see cref="TaskScheduler.Current"/>), it is queued to that worker (its inbox, unparking it; or its LIFO
/// slot when the worker completes its own operation); under another <see cref="SynchronizationContext"/>
/// it is posted there; under another <see cref="TaskScheduler"/> it runs as a task there; otherwise it goes
/// to the .NET ThreadPool.
/// </para>
/// <para>
/// For zero allocation the owner implements <see cref="IThreadPoolWorkItem"/>, creates the core with
/// <see cref="WakerCore{TResult}(IThreadPoolWorkItem)"/> and calls <see cref="InvokeContinuation"/> from its
/// <see cref="IThreadPoolWorkItem.Execute"/>: completion then queues the owner itself as the work item. A
/// default-initialised core works too but allocates one small work item per asynchronous completion.
/// </para>
/// <para>
/// Producers may race: exactly one <c>TrySet*</c> wins, the others return false. The version-checked forms
/// (<see cref="TrySetResult(short, TResult)"/>, ...) also fail once the core has been reset for its next
/// use, so a late producer never completes somebody else's operation. The version is a 16-bit counter: after
/// 65,536 resets a stale token matches again, so keep a token no longer than one use of the object.
/// </para>
/// <para>This is a mutable struct: never copy it after first use, never store it in a readonly field.</para>
/// </remarks>
public partial struct WakerCore<TResult>
{
    // _state packs everything producers and the awaiter race on, so a single CAS decides each race:
    //   bits 0-15   version (the token of the current operation)
    //   bits 16-17  status: Pending, Reserved (a producer won and is writing the result), Completed,
    //               Consumed (the awaiter read the result and a reset is in progress)
    //   bit  18     a continuation is registered
    //   bit  19     a continuation is being registered (OnCompleted claimed the registration and writes its fields)
    //   bit  20     the dispatched continuation has been taken by the thread that runs it (InvokeContinuation, or
    //               the detached work item's snapshot): from here on the outcome may be consumed
    // Only the winning producer writes the state while it is Reserved, so its publish is a plain release write.
    // Readers (Consume, TryReset, GetResult) refuse while a continuation is being registered, or is registered and
    // due but not yet taken: the outcome belongs to that continuation, and a reset under it would let its late
    // writes, or its queued work item, land in the next use of the core. Nobody but the one dispatcher writes the
    // state while it is (Completed, registered, not taken), so taking it is a plain release write too.
    // Version and status in one word is what makes the version-checked TrySet* immune to ABA: a stale
    // producer's CAS expects (its version, Pending) and can never match the next operation's state.
    // The three statuses are internal for tests that stand in for a producer between its claim and its publish.
    private const int VersionMask = 0xFFFF;
    private const int StatusShift = 16;
    private const int StatusMask = 3 << StatusShift;
    private const int StatusPending = 0;
    internal const int StatusReserved = 1 << StatusShift;
    internal const int StatusCompleted = 2 << StatusShift;
    internal const int StatusConsumed = 3 << StatusShift;
    private const int ContinuationFlag = 1 << 18;
    private const int RegisteringFlag = 1 << 19;
    private const int TakenFlag = 1 << 20;

    private readonly IThreadPoolWorkItem? _workItem;
    private int _state;
    private TResult _result;
    private ExceptionDispatchInfo? _error;

    // Written by OnCompleted before it publishes ContinuationFlag (CAS, a full fence); read by the one
    // thread that dispatches after observing the flag together with Completed.
    private Action<object?>? _continuation;
    private object? _continuationState;
    private ExecutionContext? _executionContext;
    private object? _schedulingContext;
    private int _ownerWorkerIndex;

    /// <summary>
    /// Creates a core whose continuations are dispatched by queuing <paramref name="workItem"/> (the object
    /// that embeds this core) — no allocation per completion. Its <see cref="IThreadPoolWorkItem.Execute"/>
    /// must call <see cref="InvokeContinuation"/> on this core.
    /// </summary>
    /// <param name="workItem">The owner of the core; it must not be a <see cref="Task"/>.</param>
    /// <exception cref="ArgumentNullException"><paramref name="workItem"/> is null.</exception>
    /// <exception cref="ArgumentException"><paramref name="workItem"/> is a <see cref="Task"/>.</exception>
    public WakerCore(IThreadPoolWorkItem workItem)
    {
        ArgumentNullException.ThrowIfNull(workItem);
        if (workItem is Task)
        {
            throw new ArgumentException("A Task cannot serve as the work item of a WakerCore; use the object that embeds the core.", nameof(workItem));
        }

        _workItem = workItem;
        _result = default!;
    }

    /// <summary>The token of the current operation: pass it to <see cref="ValueTask{TResult}"/> and to the version-checked <c>TrySet*</c> forms.</summary>
    /// <remarks>It wraps after 65,536 resets.</remarks>
    public short Version
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        get => (short)Volatile.Read(ref _state);
    }

    /// <summary>The work item this core queues on completion, or null when it allocates one per completion.</summary>
    public readonly IThreadPoolWorkItem? WorkItem => _workItem;

    /// <summary>
    /// Prepares the core for its next operation: clears the outcome and the continuation and advances
    /// <see cref="Version"/>, so every token of the previous operation becomes stale.
    /// </summary>
    /// <remarks>
    /// Call it only when nobody can still complete or await the current operation (after
    /// <see cref="GetResult"/>, or before its token was handed out). With racing awaiters prefer
    /// <see cref="TryReset"/>, which resets only a completed operation and only once.
    /// </remarks>
    public void Reset()
    {
        int state = Volatile.Read(ref _state);
        ClearAndAdvance(state);
    }

    /// <summary>
    /// Resets the core if operation <paramref name="token"/> has completed and has not been reset yet. Exactly
    /// one of several concurrent callers wins; call it after reading the result, then return the owner to its pool.
    /// </summary>
    /// <param name="token">The token of the operation that the caller has consumed.</param>
    /// <returns>True when this call reset the core; false when the token is stale or the operation is not completed.</returns>
    public bool TryReset(short token)
    {
        int state = Volatile.Read(ref _state);
        while ((short)state == token && (state & StatusMask) == StatusCompleted && !AwaitsItsContinuation(state))
        {
            int observed = Interlocked.CompareExchange(ref _state, (state & ~StatusMask) | StatusConsumed, state);
            if (observed == state)
            {
                ClearAndAdvance(state);
                return true;
            }

            state = observed;
        }

        return false;
    }

    /// <summary>Completes the current operation successfully.</summary>
    /// <exception cref="InvalidOperationException">The operation has already been completed.</exception>
    public void SetResult(TResult result)
    {
        if (!TrySetResult(result))
        {
            ThrowAlreadyCompleted();
        }
    }

    /// <summary>Completes the current operation with <paramref name="error"/>; awaiting rethrows that same instance.</summary>
    /// <exception cref="ArgumentNullException"><paramref name="error"/> is null.</exception>
    /// <exception cref="InvalidOperationException">The operation has already been completed.</exception>
    public void SetException(Exception error)
    {
        if (!TrySetException(error))
        {
            ThrowAlreadyCompleted();
        }
    }

    /// <summary>Completes the current operation as canceled: awaiting throws <see cref="OperationCanceledException"/> carrying <paramref name="cancellationToken"/>.</summary>
    /// <exception cref="InvalidOperationException">The operation has already been completed.</exception>
    public void SetCanceled(CancellationToken cancellationToken = default)
    {
        if (!TrySetCanceled(cancellationToken))
        {
            ThrowAlreadyCompleted();
        }
    }

    /// <summary>Completes the current operation successfully unless it is already completed.</summary>
    /// <returns>True when this call completed the operation.</returns>
    public bool TrySetResult(TResult result) => TryComplete(AnyVersion, result, null);

    /// <summary>Completes the current operation with <paramref name="error"/> unless it is already completed.</summary>
    /// <returns>True when this call completed the operation.</returns>
    /// <exception cref="ArgumentNullException"><paramref name="error"/> is null.</exception>
    public bool TrySetException(Exception error)
    {
        ArgumentNullException.ThrowIfNull(error);
        return TryComplete(AnyVersion, default!, ExceptionDispatchInfo.Capture(error));
    }

    /// <summary>Completes the current operation as canceled unless it is already completed.</summary>
    /// <returns>True when this call completed the operation.</returns>
    [SuppressMessage("ApiDesign", "RS0026:Do not add multiple public overloads with optional parameters", Justification = "Mirrors PooledValueTaskSource, whose overloads are fixed by the API contract.")]
    public bool TrySetCanceled(CancellationToken cancellationToken = default) =>
        TryComplete(AnyVersion, default!, ExceptionDispatchInfo.Capture(new OperationCanceledException(cancellationToken)));

    /// <summary>Completes operation <paramref name="version"/> successfully, if it is still the current one and not yet completed.</summary>
    /// <returns>True when this call completed the operation; false when it was completed already or <paramref name="version"/> is stale.</returns>
    public bool TrySetResult(short version, TResult result) => TryComplete((ushort)version, result, null);

    /// <summary>Completes operation <paramref name="version"/> with <paramref name="error"/>, if it is still the current one and not yet completed.</summary>
    /// <returns>True when this call completed the operation; false when it was completed already or <paramref name="version"/> is stale.</returns>
    /// <exception cref="ArgumentNullException"><paramref name="error"/> is null.</exception>
    public bool TrySetException(short version, Exception error)
    {
        ArgumentNullException.ThrowIfNull(error);

        // Fail a stale producer before paying for the capture.
        return (short)Volatile.Read(ref _state) == version
            && TryComplete((ushort)version, default!, ExceptionDispatchInfo.Capture(error));
    }

    /// <summary>Completes operation <paramref name="version"/> as canceled, if it is still the current one and not yet completed.</summary>
    /// <returns>True when this call completed the operation; false when it was completed already or <paramref name="version"/> is stale.</returns>
    [SuppressMessage("ApiDesign", "RS0026:Do not add multiple public overloads with optional parameters", Justification = "Mirrors PooledValueTaskSource, whose overloads are fixed by the API contract.")]
    public bool TrySetCanceled(short version, CancellationToken cancellationToken = default) =>
        (short)Volatile.Read(ref _state) == version
        && TryComplete((ushort)version, default!, ExceptionDispatchInfo.Capture(new OperationCanceledException(cancellationToken)));

    /// <summary>The status of operation <paramref name="token"/> (for <see cref="IValueTaskSource{TResult}.GetStatus"/>).</summary>
    /// <remarks>
    /// A stale token (its operation consumed by another read, or never issued) reports
    /// <see cref="ValueTaskSourceStatus.Faulted"/> instead of throwing, and reading it (<see cref="GetResult"/>,
    /// <see cref="Consume"/>) throws <see cref="InvalidOperationException"/>. The BCL's <c>ValueTask.AsTask</c> calls
    /// <c>GetStatus</c> from its completion callback outside any <c>try</c>: when a direct await of the same
    /// <see cref="ValueTask{TResult}"/> consumed the outcome first, a throw there would end the process. Reported as
    /// completed, the callback's read throws inside its <c>try</c> and faults the task instead.
    /// </remarks>
    public ValueTaskSourceStatus GetStatus(short token)
    {
        int state = Volatile.Read(ref _state);
        if (IsStale(state, token))
        {
            return ValueTaskSourceStatus.Faulted;
        }

        if ((state & StatusMask) != StatusCompleted)
        {
            return ValueTaskSourceStatus.Pending;
        }

        ExceptionDispatchInfo? error = _error;
        if (!IsStillCurrent(state))
        {
            return ValueTaskSourceStatus.Faulted; // a racing reader consumed it meanwhile: stale now
        }

        return error is null ? ValueTaskSourceStatus.Succeeded
            : error.SourceException is OperationCanceledException ? ValueTaskSourceStatus.Canceled
            : ValueTaskSourceStatus.Faulted;
    }

    /// <summary>The result of operation <paramref name="token"/> (for <see cref="IValueTaskSource{TResult}.GetResult"/>); rethrows its exception.</summary>
    /// <remarks>It does not reset the core: a pooled owner calls <see cref="TryReset"/> afterwards (in a <c>finally</c>) and then returns itself to its pool.</remarks>
    /// <exception cref="InvalidOperationException"><paramref name="token"/> is stale, or the operation has not completed yet.</exception>
    public TResult GetResult(short token)
    {
        int state = Volatile.Read(ref _state);
        ValidateToken(state, token);
        if ((state & StatusMask) != StatusCompleted)
        {
            PooledSourceErrors.ThrowNotCompleted();
        }

        if (AwaitsItsContinuation(state))
        {
            PooledSourceErrors.ThrowContinuationAlreadyRegistered();
        }

        // Read the outcome, then check that no racing reader (the same ValueTask awaited twice at once) reset the core
        // meanwhile: that reset clears the outcome, and the next operation may already have written its own.
        ExceptionDispatchInfo? error = _error;
        TResult result = _result;
        EnsureStillCurrent(state);
        error?.Throw();
        return result;
    }

    /// <summary>
    /// Reads the outcome of operation <paramref name="token"/> and resets the core in one step, so that of two racing
    /// readers (the same <see cref="ValueTask{TResult}"/> awaited twice at once) exactly one gets the outcome and the
    /// other throws. Returns only to that one reader, which then returns the owner to its pool and rethrows
    /// <paramref name="error"/> when there is one.
    /// </summary>
    /// <remarks>
    /// The strict form of <see cref="GetResult"/> followed by <see cref="TryReset"/>: with those two, two readers that
    /// both read before either reset both get the outcome (and only one resets). <c>PooledValueTaskSource</c> and the
    /// sockets' operations use this one; see docs/wakers.md for the pattern.
    /// </remarks>
    /// <param name="token">The token of the operation being read.</param>
    /// <param name="result">The result, when the operation succeeded.</param>
    /// <param name="error">The operation's exception (its original stack kept), or null when it succeeded.</param>
    /// <exception cref="InvalidOperationException">
    /// <paramref name="token"/> is stale (also when a racing reader consumed it first), the operation has not completed
    /// yet, or its outcome belongs to a continuation that is registered and not yet started.
    /// </exception>
    public void Consume(short token, out TResult result, out ExceptionDispatchInfo? error)
    {
        int state = Volatile.Read(ref _state);
        while (true)
        {
            ValidateToken(state, token);
            if ((state & StatusMask) != StatusCompleted)
            {
                PooledSourceErrors.ThrowNotCompleted();
            }

            if (AwaitsItsContinuation(state))
            {
                PooledSourceErrors.ThrowContinuationAlreadyRegistered();
            }

            int observed = Interlocked.CompareExchange(ref _state, (state & ~StatusMask) | StatusConsumed, state);
            if (observed == state)
            {
                break;
            }

            state = observed;
        }

        // Consumed: nobody else reads or writes the outcome until the reset below advances the version.
        result = _result;
        error = _error;
        ClearAndAdvance(state);
    }

    private const int AnyVersion = -1;

    private bool TryComplete(int version, TResult result, ExceptionDispatchInfo? error)
    {
        // Claim: (version, Pending) -> (version, Reserved). Only OnCompleted's flags may change meanwhile.
        int state = Volatile.Read(ref _state);
        while (true)
        {
            if ((state & StatusMask) != StatusPending || (version != AnyVersion && (state & VersionMask) != version))
            {
                return false;
            }

            int observed = Interlocked.CompareExchange(ref _state, state | StatusReserved, state);
            if (observed == state)
            {
                break;
            }

            state = observed;
        }

        _result = result;
        _error = error;

        // Publish: Reserved -> Completed. While Reserved nobody else writes the state (OnCompleted waits for the
        // outcome instead, see WaitWhileReserved), so a release write suffices and the flag read at the claim
        // decides who dispatches: us if a continuation was registered before, else OnCompleted.
        Volatile.Write(ref _state, (state & ~StatusMask) | StatusCompleted);
        if ((state & ContinuationFlag) != 0)
        {
            DispatchContinuation();
        }

        return true;
    }

    private void ClearAndAdvance(int state)
    {
        // Drop references so a pooled owner pins nothing; the synchronous path never set the continuation fields.
        if (RuntimeHelpers.IsReferenceOrContainsReferences<TResult>())
        {
            _result = default!;
        }

        _error = null;
        if ((state & (ContinuationFlag | RegisteringFlag)) != 0)
        {
            _continuation = null;
            _continuationState = null;
            _executionContext = null;
            _schedulingContext = null;
        }

        Volatile.Write(ref _state, (state + 1) & VersionMask);
    }

    /// <summary>
    /// True while the completed outcome belongs to a continuation that has not started: one being registered, or
    /// registered and dispatched but not yet taken by the thread that runs it. A direct read then is a second
    /// consumer of the operation (the ValueTask read while it is awaited) and loses.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static bool AwaitsItsContinuation(int state) =>
        (state & RegisteringFlag) != 0 || (state & (ContinuationFlag | TakenFlag)) == ContinuationFlag;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void ValidateToken(int state, short token)
    {
        if (IsStale(state, token))
        {
            PooledSourceErrors.ThrowStaleToken();
        }
    }

    /// <summary>Whether <paramref name="token"/> no longer names the core's current operation (another version, or consumed).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static bool IsStale(int state, short token) => (short)state != token || (state & StatusMask) == StatusConsumed;

    /// <summary>
    /// Throws for a stale token when the core's operation or status has changed since <paramref name="observed"/>
    /// was read (a racing reader consumed and reset it). Call it after reading the outcome fields: a reset happens
    /// before any of them is cleared or reused, so an unchanged state proves that what was read is the outcome.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private void EnsureStillCurrent(int observed)
    {
        if (!IsStillCurrent(observed))
        {
            PooledSourceErrors.ThrowStaleToken();
        }
    }

    /// <summary>Whether the core's operation and status are still those of <paramref name="observed"/> (see <see cref="EnsureStillCurrent"/>).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private bool IsStillCurrent(int observed)
    {
        Volatile.ReadBarrier(); // the outcome reads before the call happen before the state read below
        return ((Volatile.Read(ref _state) ^ observed) & (VersionMask | StatusMask)) == 0;
    }

    /// <summary>For tests: whether the core still holds a continuation's fields (a reset core holds none).</summary>
    internal readonly bool HoldsContinuationForTests =>
        _continuation is not null || _continuationState is not null || _executionContext is not null || _schedulingContext is not null;

    [StackTraceHidden]
    private static void ThrowAlreadyCompleted() =>
        throw new InvalidOperationException("The operation has already been completed.");
}
