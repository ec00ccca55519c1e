using System.Diagnostics;
using System.Threading.Tasks.Sources;

namespace Scheduler.Sources;

public partial struct WakerCore<TResult>
{
    /// <summary>
    /// Registers the continuation of operation <paramref name="token"/> (for <see cref="IValueTaskSource{TResult}.OnCompleted"/>)
    /// and records where it must run: the calling worker of a <see cref="WorkStealingTaskScheduler"/>, the current
    /// <see cref="SynchronizationContext"/> or <see cref="TaskScheduler"/> when <paramref name="flags"/> ask for the
    /// scheduling context, else the ThreadPool.
    /// </summary>
    /// <remarks>
    /// When the operation completed meanwhile, the continuation is queued at once (never invoked inline).
    /// <see cref="ExecutionContext"/> is captured and restored around the continuation only when
    /// <paramref name="flags"/> include <see cref="ValueTaskSourceOnCompletedFlags.FlowExecutionContext"/>.
    /// <para>A registration that loses — <paramref name="token"/> is stale, or a continuation is already registered (the
    /// operation is awaited twice) — does not throw: the continuation is queued to the ThreadPool on its own, touching
    /// nothing of the core, and its read of the result (<c>GetResult</c>) throws <see cref="InvalidOperationException"/>
    /// in the awaiting method. Thrown from here, the exception would miss that method: the async method builder calls
    /// <c>OnCompleted</c> for an <c>await</c> and rethrows what it throws on the ThreadPool (ending the process), and the
    /// method would never resume.</para>
    /// </remarks>
    /// <exception cref="ArgumentNullException"><paramref name="continuation"/> is null.</exception>
    public void OnCompleted(Action<object?> continuation, object? state, short token, ValueTaskSourceOnCompletedFlags flags)
    {
        ArgumentNullException.ThrowIfNull(continuation);

        // Claim the registration before writing anything: the fields below are shared, and a second await racing this
        // one must fail without overwriting the first one's continuation (which would then never run, or run with the
        // other's state). The claim is the Registering flag, also when the operation has completed: a reader racing
        // this await refuses while it is set, so no reset can happen under the writes below (they would land in the
        // next use of the core). The publish below turns it into the continuation flag.
        int current = Volatile.Read(ref _state);
        while (true)
        {
            if (LosesRegistration(current, token))
            {
                WakerDispatch.QueueLosingContinuation(continuation, state, flags);
                return;
            }

            if ((current & StatusMask) == StatusReserved)
            {
                current = WaitWhileReserved();
                continue;
            }

            int claimed = current | RegisteringFlag;
            int observed = Interlocked.CompareExchange(ref _state, claimed, current);
            if (observed == current)
            {
                current = claimed;
                break;
            }

            current = observed;
        }

        _executionContext = (flags & ValueTaskSourceOnCompletedFlags.FlowExecutionContext) != 0 ? ExecutionContext.Capture() : null;
        _schedulingContext = WakerDispatch.CaptureSchedulingContext(flags, out _ownerWorkerIndex);
        _continuationState = state;
        _continuation = continuation;

        // Publish: Registering -> registered, with a CAS (full fence: the writes above are visible to whoever sees
        // the flag). A producer that completed meanwhile saw no flag at its claim and left the dispatch to us.
        while (true)
        {
            if ((current & StatusMask) == StatusReserved)
            {
                current = WaitWhileReserved();
            }

            int published = (current & ~RegisteringFlag) | ContinuationFlag;
            int observed = Interlocked.CompareExchange(ref _state, published, current);
            if (observed == current)
            {
                current = published;
                break;
            }

            // Readers refuse while Registering is set, so only the author's unconditional Reset can have changed more
            // than the status.
            ValidateToken(observed, token);
            current = observed;
        }

        if ((current & StatusMask) == StatusCompleted)
        {
            // The producer finished before our flag landed, so it left the dispatch to us.
            DispatchContinuation();
        }
    }

    /// <summary>
    /// Runs the registered continuation, inside the captured <see cref="ExecutionContext"/> when one was requested.
    /// Call it only from the owner's <see cref="IThreadPoolWorkItem.Execute"/>; the core queues the owner when the
    /// continuation is due.
    /// </summary>
    /// <remarks>
    /// The continuation usually reads the result, resets the core and returns its owner to a pool: nothing here
    /// touches the core after invoking it.
    /// </remarks>
    /// <exception cref="InvalidOperationException">No continuation is registered.</exception>
    /// <exception cref="InvalidOperationException">No continuation is due (registered and its operation completed).</exception>
    public void InvokeContinuation()
    {
        int state = Volatile.Read(ref _state);
        Action<object?>? continuation = _continuation;
        if ((state & (StatusMask | ContinuationFlag | TakenFlag)) != (StatusCompleted | ContinuationFlag) || continuation is null)
        {
            throw new InvalidOperationException("No continuation is due: InvokeContinuation must only be called from the owner's IThreadPoolWorkItem.Execute when the core queued it.");
        }

        object? continuationState = _continuationState;
        ExecutionContext? executionContext = _executionContext;

        // Take it: from here on the continuation's own read may consume the outcome (a racing direct read may too,
        // and then the continuation's read throws; either way nothing below touches the core). Nobody else writes
        // the state while it is completed, registered and not taken, so a release write suffices.
        Volatile.Write(ref _state, state | TakenFlag);
        WakerDispatch.Invoke(continuation, continuationState, executionContext);
    }

    private void DispatchContinuation()
    {
        Debug.Assert(_continuation is not null, "Dispatch happens only after a continuation was published.");

        // Read everything first: once queued, the continuation may run, reset the core and re-pool the owner.
        object? schedulingContext = _schedulingContext;
        int ownerWorkerIndex = _ownerWorkerIndex;
        IThreadPoolWorkItem? workItem = _workItem;
        if (workItem is null)
        {
            // A detached work item carries its own copy of the continuation, so it is taken here, before it is queued.
            workItem = new DetachedContinuation(_continuation, _continuationState, _executionContext);
            Volatile.Write(ref _state, _state | TakenFlag);
        }

        WakerDispatch.Dispatch(workItem, schedulingContext, ownerWorkerIndex);
    }

    /// <summary>A producer is between its claim and its publish (a few instructions): wait for the outcome.</summary>
    private int WaitWhileReserved()
    {
        var spinner = new SpinWait();
        int state;
        while (((state = Volatile.Read(ref _state)) & StatusMask) == StatusReserved)
        {
            spinner.SpinOnce(sleep1Threshold: -1);
        }

        return state;
    }

    /// <summary>A stale token, or a continuation already registered or being registered: the operation is awaited twice.</summary>
    private static bool LosesRegistration(int state, short token) =>
        IsStale(state, token) || (state & (ContinuationFlag | RegisteringFlag)) != 0;
}
