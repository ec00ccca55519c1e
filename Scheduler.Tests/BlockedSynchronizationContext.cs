namespace Scheduler.Tests;

/// <summary>
/// The <see cref="SynchronizationContext"/> of an application thread that is blocked until the library call it made has
/// finished (a UI thread or a request context doing sync over async): it counts what is posted to it and never runs it.
/// Library code called under it must post nothing of its own there; only the caller's own continuations belong to it.
/// </summary>
internal sealed class BlockedSynchronizationContext : SynchronizationContext
{
    private int _posts;

    public int Posts => Volatile.Read(ref _posts);

    public override void Post(SendOrPostCallback d, object? state) => Interlocked.Increment(ref _posts);

    public override void Send(SendOrPostCallback d, object? state) =>
        throw new NotSupportedException("The context's thread is blocked.");

    /// <summary>Runs <paramref name="action"/> on this thread with this context current, as the application's thread would.</summary>
    public void Run(Action action)
    {
        SynchronizationContext? previous = Current;
        SetSynchronizationContext(this);
        try
        {
            action();
        }
        finally
        {
            SetSynchronizationContext(previous);
        }
    }

    /// <summary>Starts <paramref name="body"/> with this context current; its first await decides where the rest runs.</summary>
    public Task Start(Func<Task> body)
    {
        Task? started = null;
        Run(() => started = body());
        return started!;
    }
}

/// <summary>
/// A <see cref="TaskScheduler"/> whose threads are all blocked: it runs the one task the test hands it with
/// <see cref="RunHere"/>, on the test's thread (so code there sees it as <see cref="TaskScheduler.Current"/>), and
/// counts every other task queued to it without running it. Library code called from inside its task must queue
/// nothing of its own to it.
/// </summary>
internal sealed class BlockedTaskScheduler : TaskScheduler
{
    private int _queued;
    private Task? _handedIn;

    /// <summary>Tasks queued to it (besides the one run by <see cref="RunHere"/>), never run.</summary>
    public int Queued => Volatile.Read(ref _queued);

    /// <summary>Runs <paramref name="action"/> on this thread inside a task of this scheduler.</summary>
    public void RunHere(Action action)
    {
        var task = new Task(action, TaskCreationOptions.DenyChildAttach);
        _handedIn = task;
        task.Start(this);
        TryExecuteTask(task).Should().BeTrue();
        task.GetAwaiter().GetResult();
    }

    protected override void QueueTask(Task task)
    {
        if (!ReferenceEquals(task, _handedIn))
        {
            Interlocked.Increment(ref _queued);
        }
    }

    protected override bool TryExecuteTaskInline(Task task, bool taskWasPreviouslyQueued) => false;

    protected override IEnumerable<Task>? GetScheduledTasks() => null;
}
