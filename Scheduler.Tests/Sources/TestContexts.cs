namespace Scheduler.Tests.Sources;

/// <summary>A SynchronizationContext that runs posts on the ThreadPool with itself installed, and counts them.</summary>
internal sealed class RecordingSynchronizationContext : SynchronizationContext
{
    private int _posts;

    public int Posts => Volatile.Read(ref _posts);

    public override void Post(SendOrPostCallback d, object? state)
    {
        Interlocked.Increment(ref _posts);
        ThreadPool.QueueUserWorkItem(_ =>
        {
            SynchronizationContext? previous = Current;
            SetSynchronizationContext(this);
            try
            {
                d(state);
            }
            finally
            {
                SetSynchronizationContext(previous);
            }
        });
    }

    public override SynchronizationContext CreateCopy() => this;
}

/// <summary>A TaskScheduler that runs tasks on the ThreadPool and counts QueueTask calls.</summary>
internal sealed class CountingTaskScheduler : TaskScheduler
{
    private int _queued;

    public int Queued => Volatile.Read(ref _queued);

    protected override void QueueTask(Task task)
    {
        Interlocked.Increment(ref _queued);
        ThreadPool.UnsafeQueueUserWorkItem(_ => TryExecuteTask(task), null);
    }

    protected override bool TryExecuteTaskInline(Task task, bool taskWasPreviouslyQueued) => false;

    protected override IEnumerable<Task> GetScheduledTasks() => [];
}

/// <summary>A SynchronizationContext that holds every post until the test runs them (with itself installed).</summary>
internal sealed class HeldPostsSynchronizationContext : SynchronizationContext
{
    private readonly Queue<(SendOrPostCallback Callback, object? State)> _posts = new();

    public int Held
    {
        get
        {
            lock (_posts)
            {
                return _posts.Count;
            }
        }
    }

    /// <summary>The callbacks held, in the order they were posted.</summary>
    public SendOrPostCallback[] HeldCallbacks
    {
        get
        {
            lock (_posts)
            {
                return [.. _posts.Select(post => post.Callback)];
            }
        }
    }

    public override void Post(SendOrPostCallback d, object? state)
    {
        lock (_posts)
        {
            _posts.Enqueue((d, state));
        }
    }

    public override SynchronizationContext CreateCopy() => this;

    /// <summary>Runs the held posts on the caller, in order, with this context installed.</summary>
    public void RunAll()
    {
        SynchronizationContext? previous = Current;
        SetSynchronizationContext(this);
        try
        {
            while (true)
            {
                (SendOrPostCallback Callback, object? State) post;
                lock (_posts)
                {
                    if (!_posts.TryDequeue(out post))
                    {
                        return;
                    }
                }

                post.Callback(post.State);
            }
        }
        finally
        {
            SetSynchronizationContext(previous);
        }
    }
}

/// <summary>
/// A SynchronizationContext whose first Post holds the posting thread until <see cref="Release"/> (at most 30 s): a
/// test's way to stop a completing call in the middle. Every post then runs on the ThreadPool; all are counted.
/// </summary>
internal sealed class GatedSynchronizationContext : SynchronizationContext, IDisposable
{
    private readonly ManualResetEventSlim _held = new();
    private readonly ManualResetEventSlim _release = new();
    private int _posts;

    public int Posts => Volatile.Read(ref _posts);

    public override void Post(SendOrPostCallback d, object? state)
    {
        if (Interlocked.Increment(ref _posts) == 1)
        {
            _held.Set();
            _release.Wait(TimeSpan.FromSeconds(30));
        }

        ThreadPool.QueueUserWorkItem(_ => d(state));
    }

    public override SynchronizationContext CreateCopy() => this;

    /// <summary>Waits (bounded) until the first post is being held.</summary>
    public bool WaitUntilHeld(TimeSpan timeout) => _held.Wait(timeout);

    public void Release() => _release.Set();

    public void Dispose()
    {
        _release.Set();
        _held.Dispose();
        _release.Dispose();
    }
}
