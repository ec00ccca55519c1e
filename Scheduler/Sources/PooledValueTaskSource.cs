using System.Diagnostics.CodeAnalysis;
using System.Runtime.ExceptionServices;
using System.Threading.Tasks.Sources;

namespace Scheduler.Sources;

/// <summary>
/// The result-less twin of <see cref="PooledValueTaskSource{T}"/>: a pooled, allocation-free producer of
/// <see cref="ValueTask"/> with the same rules (one await per rental, version-checked completion, continuation
/// queued to the awaiting worker, back to the pool when the awaiter reads the result).
/// </summary>
/// <remarks>
/// The version is 16 bits, so a token held across 65,536 later reuses of the same object matches again; never
/// keep one beyond its operation. See <see cref="PooledValueTaskSource{T}"/> for the full contract.
/// </remarks>
public sealed class PooledValueTaskSource : IValueTaskSource
{
    private static readonly ValueTaskSourcePool<PooledValueTaskSource> s_pool =
        new(static () => new PooledValueTaskSource(), PooledSourceDefaults.PoolCapacity);

    private WakerCore<bool> _core;

    private PooledValueTaskSource() => _core = new WakerCore<bool>(new ContinuationRunner(this));

    /// <summary>The awaitable of the current rental.</summary>
    public ValueTask Task => new(this, _core.Version);

    /// <summary>The token of the current rental, for the version-checked <c>TrySet*</c> forms. It wraps after 65,536 reuses.</summary>
    public short Version => _core.Version;

    internal static ValueTaskSourcePool<PooledValueTaskSource> Pool => s_pool;

    /// <summary>Takes a source from the pool (or creates one), ready for a new operation.</summary>
    /// <returns>A pending source; its <see cref="Task"/> completes when a <c>TrySet*</c> method succeeds.</returns>
    public static PooledValueTaskSource Rent() => s_pool.Rent();

    /// <summary>Completes the current rental successfully.</summary>
    /// <returns>True when this call completed it; false when it was already completed.</returns>
    public bool TrySetResult() => _core.TrySetResult(true);

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

    /// <summary>Completes rental <paramref name="version"/> successfully if it is still current and pending.</summary>
    /// <returns>True when this call completed it; false when it was already completed or <paramref name="version"/> is stale.</returns>
    public bool TrySetResult(short version) => _core.TrySetResult(version, true);

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

    void IValueTaskSource.GetResult(short token)
    {
        // Read and reset in one step, as PooledValueTaskSource<T> does: only one of two racing reads succeeds.
        _core.Consume(token, out _, out ExceptionDispatchInfo? error);
        s_pool.Return(this);
        error?.Throw();
    }

    ValueTaskSourceStatus IValueTaskSource.GetStatus(short token) => _core.GetStatus(token);

    void IValueTaskSource.OnCompleted(Action<object?> continuation, object? state, short token, ValueTaskSourceOnCompletedFlags flags) =>
        _core.OnCompleted(continuation, state, token, flags);

    private sealed class ContinuationRunner(PooledValueTaskSource owner) : IThreadPoolWorkItem
    {
        public void Execute() => owner._core.InvokeContinuation();
    }
}
