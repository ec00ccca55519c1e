using System.Diagnostics;
using System.Runtime.CompilerServices;
using System.Runtime.ExceptionServices;
using System.Threading.Tasks.Sources;

namespace Scheduler.IO;

/// <summary>
/// The completion half of a reactor operation: a version-checked result slot plus owner-worker dispatch.
/// Like <see cref="ManualResetValueTaskSourceCore{TResult}"/>, but a completion never runs the continuation
/// inline: it is queued to the worker that awaited (its inbox when completed from the reactor thread),
/// else to the captured <see cref="SynchronizationContext"/>/<see cref="TaskScheduler"/>, else to the
/// ThreadPool with the owning operation itself as the work item, so no completion allocates.
/// </summary>
/// <remarks>
/// Embedded in a long-lived operation object; <c>workItem</c> is that object, whose
/// <see cref="IThreadPoolWorkItem.Execute"/> calls <see cref="InvokeContinuation"/>.
/// </remarks>
internal struct OperationCore<TResult>
{
    private static readonly Action<object?> s_completedSentinel = static _ => Debug.Fail("sentinel invoked");

    private Action<object?>? _continuation;
    private object? _continuationState;
    private ExecutionContext? _executionContext;
    private WorkStealingTaskScheduler? _ownerScheduler;
    private int _ownerWorker;
    private object? _capturedContext;
    private bool _completed;
    private TResult? _result;
    private ExceptionDispatchInfo? _error;
    private short _version;

    public readonly short Version => _version;

    public readonly bool IsCompleted => Volatile.Read(ref Unsafe.AsRef(in _completed));

    /// <summary>Prepares for the next operation; advances the version so stale tokens fail.</summary>
    public void Reset()
    {
        _version++;
        _completed = false;
        _result = default;
        _error = null;
        _continuation = null;
        _continuationState = null;
        _executionContext = null;
        _ownerScheduler = null;
        _capturedContext = null;
    }

    public readonly void ValidateToken(short token)
    {
        if (token != _version)
        {
            throw new InvalidOperationException("The operation's ValueTask was already consumed or is stale; a ValueTask can be awaited only once.");
        }
    }

    public readonly ValueTaskSourceStatus GetStatus(short token)
    {
        ValidateToken(token);
        return !IsCompleted ? ValueTaskSourceStatus.Pending
            : _error is null ? ValueTaskSourceStatus.Succeeded
            : _error.SourceException is OperationCanceledException ? ValueTaskSourceStatus.Canceled
            : ValueTaskSourceStatus.Faulted;
    }

    public readonly TResult GetResult(short token)
    {
        ValidateToken(token);
        if (!IsCompleted)
        {
            throw new InvalidOperationException("The operation has not completed yet; await the ValueTask instead of reading its result.");
        }

        _error?.Throw();
        return _result!;
    }

    public void OnCompleted(Action<object?> continuation, object? state, short token, ValueTaskSourceOnCompletedFlags flags, IThreadPoolWorkItem workItem)
    {
        ArgumentNullException.ThrowIfNull(continuation);
        ValidateToken(token);

        if ((flags & ValueTaskSourceOnCompletedFlags.FlowExecutionContext) != 0)
        {
            _executionContext = ExecutionContext.Capture();
        }

        if ((flags & ValueTaskSourceOnCompletedFlags.UseSchedulingContext) != 0)
        {
            CaptureSchedulingContext();
        }

        _continuationState = state;
        Action<object?>? previous = Interlocked.CompareExchange(ref _continuation, continuation, null);
        if (previous is not null)
        {
            if (!ReferenceEquals(previous, s_completedSentinel))
            {
                throw new InvalidOperationException("The operation's ValueTask is already being awaited; a ValueTask can be awaited only once.");
            }

            // Completed between the awaiter's IsCompleted check and here: still never run inline.
            _continuation = continuation;
            Dispatch(workItem);
        }
    }

    public void SetResult(TResult result, IThreadPoolWorkItem workItem)
    {
        _result = result;
        SignalCompletion(workItem);
    }

    public void SetException(Exception error, IThreadPoolWorkItem workItem)
    {
        _error = ExceptionDispatchInfo.Capture(error);
        SignalCompletion(workItem);
    }

    /// <summary>Runs the stored continuation; called by the owning operation's <see cref="IThreadPoolWorkItem.Execute"/>.</summary>
    public void InvokeContinuation()
    {
        Action<object?> continuation = _continuation!;
        object? state = _continuationState;
        ExecutionContext? context = _executionContext;
        if (context is null)
        {
            continuation(state);
        }
        else
        {
            ExecutionContext.Run(context, static s =>
            {
                var (c, st) = ((Action<object?>, object?))s!;
                c(st);
            }, (continuation, state));
        }
    }

    private void CaptureSchedulingContext()
    {
        WorkStealingTaskScheduler? scheduler = WorkStealingTaskScheduler.CurrentWorkerScheduler;
        if (scheduler is not null && scheduler.TryGetCurrentWorkerIndex(out int index))
        {
            _ownerScheduler = scheduler;
            _ownerWorker = index;
            return;
        }

        SynchronizationContext? syncContext = SynchronizationContext.Current;
        if (syncContext is not null && syncContext.GetType() != typeof(SynchronizationContext))
        {
            _capturedContext = syncContext;
            return;
        }

        TaskScheduler taskScheduler = TaskScheduler.Current;
        if (taskScheduler is WorkStealingTaskScheduler ours)
        {
            _ownerScheduler = ours;
            _ownerWorker = -1;
        }
        else if (taskScheduler != TaskScheduler.Default)
        {
            _capturedContext = taskScheduler;
        }
    }

    private void SignalCompletion(IThreadPoolWorkItem workItem)
    {
        Volatile.Write(ref _completed, true);
        Action<object?>? continuation = Volatile.Read(ref _continuation)
            ?? Interlocked.CompareExchange(ref _continuation, s_completedSentinel, null);
        if (continuation is not null)
        {
            Dispatch(workItem);
        }
    }

    private readonly void Dispatch(IThreadPoolWorkItem workItem)
    {
        if (_ownerScheduler is { } scheduler)
        {
            if (_ownerWorker >= 0)
            {
                scheduler.EnqueueToWorker(_ownerWorker, workItem);
            }
            else
            {
                scheduler.Enqueue(workItem);
            }
        }
        else if (_capturedContext is SynchronizationContext syncContext)
        {
            syncContext.Post(static s => ((IThreadPoolWorkItem)s!).Execute(), workItem);
        }
        else if (_capturedContext is TaskScheduler taskScheduler)
        {
            _ = Task.Factory.StartNew(static s => ((IThreadPoolWorkItem)s!).Execute(), workItem, CancellationToken.None, TaskCreationOptions.DenyChildAttach, taskScheduler);
        }
        else
        {
            ThreadPool.UnsafeQueueUserWorkItem(workItem, preferLocal: false);
        }
    }
}
