using System.Diagnostics.CodeAnalysis;
using System.Runtime.ExceptionServices;
using System.Threading.Tasks.Sources;

namespace Scheduler.Sources;

/// <summary>
/// A pooled, allocation-free producer of <see cref="ValueTask{TResult}"/>: <see cref="Rent"/> one, hand out
/// <see cref="Task"/>, complete it with a <c>TrySet*</c> method from any thread. The awaiter's continuation is
/// queued back to the worker that awaited (or its synchronization context, task scheduler, or the ThreadPool),
/// never run on the completing thread, and the source returns to its pool when the awaiter reads the result.
/// </summary>
/// <typeparam name="T">The result type.</typeparam>
/// <remarks>
/// <para>
/// Each rental is one operation, identified by <see cref="Version"/>. Await its <see cref="Task"/> exactly once
/// (or read <c>.Result</c> once after completion): reading the result resets the source and returns it to the pool,
/// so a second await, or reading the result before completion, throws <see cref="InvalidOperationException"/>.
/// A rental that is never awaited is simply left to the GC.
/// </para>
/// <para>
/// When several producers race (I/O against cancellation against a timeout), capture <see cref="Version"/> at
/// rental time and use the version-checked <c>TrySet*(version, ...)</c> forms: the losers get false and can never
/// complete the source's next rental. The forms without a version complete whatever rental is current and are
/// only safe while the caller knows its rental has not been consumed. The version is 16 bits, so a token
/// held across 65,536 later reuses of the same object matches again; never keep one beyond its operation.
/// </para>
/// </remarks>
public sealed class PooledValueTaskSource<T> : IValueTaskSource<T>, IValueTaskSource
{
    private static readonly ValueTaskSourcePool<PooledValueTaskSource<T>> s_pool =
        new(static () => new PooledValueTaskSource<T>(), PooledSourceDefaults.PoolCapacity);

    private WakerCore<T> _core;

    private PooledValueTaskSource() => _core = new WakerCore<T>(new ContinuationRunner(this));

    /// <summary>The awaitable of the current rental.</summary>
    public ValueTask<T> Task => new(this, _core.Version);

    /// <summary>The token of the current rental, for the version-checked <c>TrySet*</c> forms. It wraps after 65,536 reuses.</summary>
    public short Version => _core.Version;

    internal static ValueTaskSourcePool<PooledValueTaskSource<T>> Pool => s_pool;

    internal bool HoldsContinuationForTests => _core.HoldsContinuationForTests;

    /// <summary>Takes a source from the pool (or creates one), ready for a new operation.</summary>
    /// <returns>A pending source; its <see cref="Task"/> completes when a <c>TrySet*</c> method succeeds.</returns>
    [SuppressMessage("Design", "CA1000:Do not declare static members on generic types", Justification = "PooledValueTaskSource<T>.Rent() is the API contract; the pool is per result type.")]
    public static PooledValueTaskSource<T> Rent() => s_pool.Rent();

    /// <summary>Completes the current rental with <paramref name="result"/>.</summary>
    /// <returns>True when this call completed it; false when it was already completed.</returns>
    public bool TrySetResult(T result) => _core.TrySetResult(result);

    /// <summary>Completes the current rental with <paramref name="exception"/>; awaiting rethrows that same instance.</summary>
    /// <returns>True when this call completed it; false when it was already completed.</returns>
    /// <exception cref="ArgumentNullException"><paramref name="exception"/> is null.</exception>
    public bool TrySetException(Exception exception)
    {
        // Checked here although the core checks too: the core's exception would name its own parameter (error).
        ArgumentNullException.ThrowIfNull(exception);
        return _core.TrySetException(exception);
    }

    /// <summary>Completes the current rental as canceled; awaiting throws <see cref="OperationCanceledException"/> carrying <paramref name="cancellationToken"/>.</summary>
    /// <returns>True when this call completed it; false when it was already completed.</returns>
    [SuppressMessage("ApiDesign", "RS0026:Do not add multiple public overloads with optional parameters", Justification = "Overloads fixed by the API contract.")]
    public bool TrySetCanceled(CancellationToken cancellationToken = default) => _core.TrySetCanceled(cancellationToken);

    /// <summary>Completes rental <paramref name="version"/> with <paramref name="result"/> if it is still current and pending.</summary>
    /// <returns>True when this call completed it; false when it was already completed or <paramref name="version"/> is stale.</returns>
    public bool TrySetResult(short version, T result) => _core.TrySetResult(version, result);

    /// <summary>Completes rental <paramref name="version"/> with <paramref name="exception"/> if it is still current and pending.</summary>
    /// <returns>True when this call completed it; false when it was already completed or <paramref name="version"/> is stale.</returns>
    /// <exception cref="ArgumentNullException"><paramref name="exception"/> is null.</exception>
    public bool TrySetException(short version, Exception exception)
    {
        ArgumentNullException.ThrowIfNull(exception); // as above: the core would name its parameter error
        return _core.TrySetException(version, exception);
    }

    /// <summary>Completes rental <paramref name="version"/> as canceled (carrying <paramref name="cancellationToken"/>) if it is still current and pending.</summary>
    /// <returns>True when this call completed it; false when it was already completed or <paramref name="version"/> is stale.</returns>
    [SuppressMessage("ApiDesign", "RS0026:Do not add multiple public overloads with optional parameters", Justification = "Overloads fixed by the API contract.")]
    public bool TrySetCanceled(short version, CancellationToken cancellationToken = default) => _core.TrySetCanceled(version, cancellationToken);

    T IValueTaskSource<T>.GetResult(short token) => GetResultAndReturn(token);

    void IValueTaskSource.GetResult(short token) => GetResultAndReturn(token);

    ValueTaskSourceStatus IValueTaskSource<T>.GetStatus(short token) => _core.GetStatus(token);

    ValueTaskSourceStatus IValueTaskSource.GetStatus(short token) => _core.GetStatus(token);

    void IValueTaskSource<T>.OnCompleted(Action<object?> continuation, object? state, short token, ValueTaskSourceOnCompletedFlags flags) =>
        _core.OnCompleted(continuation, state, token, flags);

    void IValueTaskSource.OnCompleted(Action<object?> continuation, object? state, short token, ValueTaskSourceOnCompletedFlags flags) =>
        _core.OnCompleted(continuation, state, token, flags);

    private T GetResultAndReturn(short token)
    {
        // Validates the token, refuses an early read without touching the rental, and reads and resets in one step:
        // of two racing reads (the ValueTask awaited twice at once) exactly one gets the outcome and pools the source.
        _core.Consume(token, out T result, out ExceptionDispatchInfo? error);
        s_pool.Return(this);
        error?.Throw();
        return result;
    }

    /// <summary>The work item the core queues: a separate object, so the public type exposes no Execute.</summary>
    private sealed class ContinuationRunner(PooledValueTaskSource<T> owner) : IThreadPoolWorkItem
    {
        public void Execute() => owner._core.InvokeContinuation();
    }
}
