using System.Runtime.ExceptionServices;
using System.Threading.Tasks.Sources;
using Scheduler.Sources;

namespace Scheduler.IO;

/// <summary>
/// One direction's reusable operation, built on <see cref="WakerCore{TResult}"/> on a <see cref="ReactorSocket"/> (one receive-side and one send-side
/// instance per socket, so steady-state I/O allocates nothing). It tries the system call on the caller's
/// thread first; only on EAGAIN does it park as <c>Pending</c> and let readiness from the reactor retry it.
/// </summary>
/// <remarks>
/// <para>State machine (all transitions by CAS, so exactly one party finishes an operation):
/// <c>Free → Busy</c> (caller owns it, a second caller gets <see cref="InvalidOperationException"/>),
/// <c>Busy → Pending</c> (parked), <c>Pending → Running</c> (the reactor retries the syscall) or
/// <c>Pending → Completed</c> (cancellation or disposal), <c>Running → Pending|Completed</c> (a cancellation or
/// disposal that came while Running is honoured by the reactor as it parks the operation again),
/// and <c>Completed → Free</c> once the awaiter has read the result.</para>
/// <para>No lost edge: the caller records the direction's sequence number before the syscall and re-reads it
/// after publishing <c>Pending</c> (both with full fences); the reactor bumps the sequence before reading the
/// state. If an edge slipped in between, one of the two sees it and the syscall is retried.</para>
/// </remarks>
internal abstract class ReactorOperation<TResult> : IValueTaskSource<TResult>, IThreadPoolWorkItem
{
    private const int Free = 0;
    private const int Busy = 1;
    private const int Pending = 2;
    private const int Running = 3;
    private const int Completed = 4;

    private static readonly Action<object?, CancellationToken> s_cancel = static (state, token) =>
        ((ReactorOperation<TResult>)state!).TryFinishFromPending(new OperationCanceledException(token));

    // _drainedAtSequence when no attempt has proved the socket drained (sequences are 32-bit, so none equals it).
    private const long NoDrainProof = long.MinValue;

    private readonly bool _isWrite;
    private int _state;

    // The direction's sequence number read before the last attempt that proved the socket drained, or NoDrainProof.
    // A receive that finds it equal to the current sequence parks at once rather than pay for a recv that would
    // say EAGAIN: in a request/response exchange that is every other receive (tokio does the same; epoll(7)
    // states the rule for stream sockets). See ReactorSocket.DrainProofsHold for when a short read proves
    // nothing.
    private long _drainedAtSequence = NoDrainProof;
    private WakerCore<TResult> _core;
    private CancellationTokenRegistration _registration;

    // The token of the parked operation: a cancellation that fires while the reactor retries (Running) cannot finish
    // the operation itself, so the reactor checks it when it parks the operation again.
    private CancellationToken _cancellationToken;

    protected ReactorOperation(ReactorSocket socket, bool isWrite)
    {
        Socket = socket;
        _isWrite = isWrite;
        // The operation itself is the work item the core queues to the awaiting worker: no allocation per completion.
        _core = new WakerCore<TResult>(this);
    }

    protected ReactorSocket Socket { get; }

    /// <summary>Claims the operation for one caller; false when another call of this direction is in flight.</summary>
    public bool TryAcquire() => Interlocked.CompareExchange(ref _state, Busy, Free) == Free;

    /// <summary>Gives back an operation acquired with <see cref="TryAcquire"/> without running it.</summary>
    public void Release()
    {
        ClearParameters();
        _cancellationToken = default;
        Volatile.Write(ref _state, Free);
    }

    /// <summary>Runs the acquired operation: syscall first, then parks until readiness.</summary>
    public ValueTask<TResult> Run(CancellationToken cancellationToken)
    {
        if (cancellationToken.IsCancellationRequested)
        {
            Release();
            return ValueTask.FromCanceled<TResult>(cancellationToken);
        }

        while (true)
        {
            int sequence = Socket.ReadSequence(_isWrite);
            bool done;
            TResult result;
            Exception? error;
            if (_drainedAtSequence == sequence && Socket.DrainProofsHold)
            {
                // The last attempt found the socket drained and no edge has come since: this one would say EAGAIN.
                done = false;
                result = default!;
                error = null;
                SkippedAttempts++;
            }
            else
            {
                done = Attempt(sequence, out result, out error);
            }

            if (done)
            {
                Release();
                return error is null ? new ValueTask<TResult>(result) : ValueTask.FromException<TResult>(error);
            }

            _core.Reset();
            short version = _core.Version;
            if (cancellationToken.CanBeCanceled)
            {
                _cancellationToken = cancellationToken;
                _registration = cancellationToken.UnsafeRegister(s_cancel, this);
            }

            Interlocked.Exchange(ref _state, Pending);
            if (Socket.ReadSequence(_isWrite) != sequence)
            {
                // An edge arrived between our syscall and publishing Pending: take the operation back and retry,
                // unless the reactor (or cancellation/disposal) already took it and will finish it.
                if (Interlocked.CompareExchange(ref _state, Busy, Pending) == Pending)
                {
                    _registration.Dispose();
                    _registration = default;
                    if (cancellationToken.IsCancellationRequested)
                    {
                        Release();
                        return ValueTask.FromCanceled<TResult>(cancellationToken);
                    }

                    continue;
                }
            }

            if (Socket.IsDisposed)
            {
                TryFinishFromPending(Socket.CreateDisposedException());
            }
            else if (cancellationToken.IsCancellationRequested)
            {
                // Cancelled while registering: the callback ran before Pending was visible and lost its CAS.
                TryFinishFromPending(new OperationCanceledException(cancellationToken));
            }

            return new ValueTask<TResult>(this, version);
        }
    }

    /// <summary>
    /// Called by the reactor thread after it bumped this direction's sequence number: the reactor retries the
    /// non-blocking system call itself and completes the waker, which sends the continuation to the awaiting worker's
    /// inbox (never running it here). Handing the retry to that worker instead costs one more cross-thread hop per
    /// edge and measured 10–25% less echo throughput with a worse p99 at 256 connections (docs/io.md).
    /// </summary>
    public void OnReady()
    {
        if (Volatile.Read(ref _state) != Pending || Interlocked.CompareExchange(ref _state, Running, Pending) != Pending)
        {
            return;
        }

        RetryWhileRunning();
    }

    /// <summary>
    /// Receives skipped because the socket was known to be drained (see <see cref="LastAttemptDrained"/>). Written
    /// by the operation's current caller only; for tests.
    /// </summary>
    internal int SkippedAttempts { get; private set; }

    /// <summary>
    /// Set by <see cref="TryExecute(ReactorSocket.FdReference, out TResult, out Exception?)"/>: the attempt proved
    /// the socket drained at that moment (a receive that said EAGAIN, or came back with fewer bytes than asked).
    /// </summary>
    protected bool LastAttemptDrained { get; set; }

    /// <summary>
    /// One attempt, recording whether it proved the socket drained. <paramref name="sequence"/> is the direction's
    /// sequence number read before it.
    /// </summary>
    private bool Attempt(int sequence, out TResult result, out Exception? error)
    {
        LastAttemptDrained = false;
        bool done = TryExecuteGuarded(out result, out error);

        // Every byte that arrives after a drained attempt brings an edge, and the reactor bumps the sequence for
        // it: while the sequence still reads what it did before this attempt, the next one would find nothing.
        // Written here by whoever attempts (the caller, or the reactor), read by the next caller after the
        // completion has published it.
        _drainedAtSequence = LastAttemptDrained ? sequence : NoDrainProof;
        return done;
    }

    /// <summary>
    /// The syscall attempt with every unexpected exception turned into this operation's failure: it must neither
    /// leave the operation claimed (the socket stays usable) nor escape onto the reactor thread (it belongs to this
    /// operation only).
    /// </summary>
    private bool TryExecuteGuarded(out TResult result, out Exception? error)
    {
        try
        {
            return TryExecute(out result, out error);
        }
        catch (Exception e)
        {
            result = default!;
            error = e;
            return true;
        }
    }

    // Precondition: this thread moved the state to Running.
    private void RetryWhileRunning()
    {
        while (true)
        {
            int sequence = Socket.ReadSequence(_isWrite);
            bool done = Attempt(sequence, out TResult result, out Exception? error);

            if (done)
            {
                Volatile.Write(ref _state, Completed);
                Finish(result, error);
                return;
            }

            Interlocked.Exchange(ref _state, Pending);
            CancellationToken cancellationToken = _cancellationToken;
            if (cancellationToken.IsCancellationRequested)
            {
                // The callback ran while we held the operation (its CAS failed) and will not run again. It may also
                // have run after we parked it and finished it already: then this does nothing.
                TryFinishFromPending(new OperationCanceledException(cancellationToken));
                return;
            }

            if (Socket.ReadSequence(_isWrite) == sequence && !Socket.IsDisposed)
            {
                return;
            }

            if (Interlocked.CompareExchange(ref _state, Running, Pending) != Pending)
            {
                return;
            }

            if (Socket.IsDisposed)
            {
                Volatile.Write(ref _state, Completed);
                Finish(default!, Socket.CreateDisposedException());
                return;
            }
        }
    }

    /// <summary>Fails a parked operation (disposal, cancellation). False when it is not parked.</summary>
    public bool TryFinishFromPending(Exception error)
    {
        if (Interlocked.CompareExchange(ref _state, Completed, Pending) != Pending)
        {
            return false;
        }

        Finish(default!, error);
        return true;
    }

    /// <summary>
    /// One non-blocking attempt. False on EAGAIN (wait for readiness); true with a result or an error otherwise.
    /// The descriptor is referenced for the whole attempt so a concurrent dispose cannot close (and the kernel
    /// reuse) it mid-syscall; a socket already disposed completes with the disposed error.
    /// </summary>
    protected virtual bool TryExecute(out TResult result, out Exception? error)
    {
        if (!Socket.TryAddRef(out ReactorSocket.FdReference fd))
        {
            result = default!;
            error = Socket.CreateDisposedException();
            return true;
        }

        using (fd)
        {
            return TryExecute(fd, out result, out error);
        }
    }

    /// <summary>The syscall attempt proper, with the descriptor referenced; same contract as the overload without it.</summary>
    protected abstract bool TryExecute(ReactorSocket.FdReference fd, out TResult result, out Exception? error);

    /// <summary>Drops references to caller buffers so a finished operation pins nothing.</summary>
    protected abstract void ClearParameters();

    private void Finish(TResult result, Exception? error)
    {
        // The cancellation registration stays until GetResult: disposing it there keeps that work (a lock on the
        // token's source) off the reactor thread, and waits out a callback that may still be running, which could
        // otherwise finish the socket's next operation once this one is released. A callback that runs in between
        // finds the operation no longer pending and does nothing.
        if (error is null)
        {
            _core.SetResult(result);
        }
        else
        {
            _core.SetException(error);
        }
    }

    TResult IValueTaskSource<TResult>.GetResult(short token)
    {
        if (_core.GetStatus(token) == ValueTaskSourceStatus.Pending)
        {
            throw new InvalidOperationException("The operation has not completed yet; await the ValueTask instead of reading its result.");
        }

        // Read and reset in one step: of two racing reads (the same ValueTask awaited twice at once) exactly one gets
        // the outcome and the other throws; reading first and resetting after let both read it (a receive's bytes,
        // an accepted socket, given to two callers; AdversarialOperationTokenTests). Only the winner releases the
        // operation, after the reset: the socket's next caller can only start then.
        _core.Consume(token, out TResult result, out ExceptionDispatchInfo? error);
        _registration.Dispose();
        _registration = default;
        Release();
        error?.Throw();
        return result;
    }

    ValueTaskSourceStatus IValueTaskSource<TResult>.GetStatus(short token) => _core.GetStatus(token);

    void IValueTaskSource<TResult>.OnCompleted(Action<object?> continuation, object? state, short token, ValueTaskSourceOnCompletedFlags flags) =>
        _core.OnCompleted(continuation, state, token, flags);

    void IThreadPoolWorkItem.Execute() => _core.InvokeContinuation();
}
