using System.Threading.Tasks.Sources;
using Scheduler.Sources;

namespace Scheduler.Tests.Sources;

/// <summary>The minimal author-side awaitable the docs describe: a class embedding a <see cref="WakerCore{TResult}"/>.</summary>
internal sealed class TestWaker<T> : IValueTaskSource<T>, IThreadPoolWorkItem
{
    private WakerCore<T> _core;
    private volatile int _registrations;

    public TestWaker() => _core = new WakerCore<T>(this);

    public ValueTask<T> Task => new(this, _core.Version);

    public short Version => _core.Version;

    public ref WakerCore<T> Core => ref _core;

    public int Registrations => _registrations;

    /// <summary>Spins until a continuation has been registered (the awaiter went asynchronous).</summary>
    public void WaitForRegistration(int count = 1)
    {
        var spinner = new SpinWait();
        var deadline = DateTime.UtcNow.AddSeconds(10);
        while (_registrations < count)
        {
            if (DateTime.UtcNow > deadline)
            {
                throw new TimeoutException("The awaiter never registered a continuation.");
            }

            spinner.SpinOnce();
        }
    }

    public T GetResult(short token) => _core.GetResult(token);

    public ValueTaskSourceStatus GetStatus(short token) => _core.GetStatus(token);

    public void OnCompleted(Action<object?> continuation, object? state, short token, ValueTaskSourceOnCompletedFlags flags)
    {
        _core.OnCompleted(continuation, state, token, flags);
        Interlocked.Increment(ref _registrations);
    }

    void IThreadPoolWorkItem.Execute() => _core.InvokeContinuation();
}

/// <summary>Occupies every worker but one with a blocking task, so nothing can steal from the free worker's inbox.</summary>
internal sealed class WorkerBlockers : IDisposable
{
    private readonly ManualResetEventSlim _release = new();

    // Disposed with the blockers, not when the constructor's wait returns: the last blocker may still be inside Signal
    // then, and a disposed event would fault it before it blocks its worker.
    private readonly CountdownEvent _started;
    private readonly Task[] _blockers;

    public WorkerBlockers(WorkStealingTaskScheduler scheduler, int count)
    {
        _started = new CountdownEvent(count);
        _blockers = new Task[count];
        for (int i = 0; i < count; i++)
        {
            _blockers[i] = scheduler.Factory.StartNew(() =>
            {
                _started.Signal();
                _release.Wait();
            });
        }

        _started.Wait(TimeSpan.FromSeconds(10)).Should().BeTrue("every blocker should start on its own worker");
    }

    public void Dispose()
    {
        _release.Set();
        if (Task.WaitAll(_blockers, TimeSpan.FromSeconds(10)))
        {
            _started.Dispose();
            _release.Dispose();
        }
    }
}
