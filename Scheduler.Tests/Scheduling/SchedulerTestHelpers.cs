using System.Runtime.CompilerServices;

namespace Scheduler.Tests.Scheduling;

/// <summary>Tests that measure process-wide CPU or memory must not share the machine with other tests.</summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class SerialResourceGroup
{
    public const string Name = "Serial resource measurements";
}

internal static class SchedulerTestHelpers
{
    public static readonly TimeSpan Timeout = TimeSpan.FromSeconds(30);

    private static readonly System.Reflection.MethodInfo s_getScheduledTasks = typeof(TaskScheduler).GetMethod(
        "GetScheduledTasks", System.Reflection.BindingFlags.Instance | System.Reflection.BindingFlags.NonPublic)!;

    public static WorkStealingTaskScheduler Create(int workers, int spin = 30) =>
        new(new WorkStealingTaskSchedulerOptions { WorkerCount = workers, SpinIterations = spin, ThreadNamePrefix = "Test" });

    /// <summary>
    /// As <see cref="Create"/>, with blocking compensation off: for tests that say which worker runs an item while
    /// another computes or blocks. With it on, a worker held off its core for the compensation delay (100 ms, common on
    /// a loaded machine) makes the watchdog see a standstill and start a compensation thread, which is no worker and
    /// may run the item instead (session 38: a stalled-pair test read worker index -1 that way).
    /// </summary>
    public static WorkStealingTaskScheduler CreateWithoutCompensation(int workers, int spin = 30, int localQueueCapacity = WorkStealingDeque.DefaultCapacity) =>
        new(new WorkStealingTaskSchedulerOptions
        {
            WorkerCount = workers,
            SpinIterations = spin,
            BlockingCompensationDelay = System.Threading.Timeout.InfiniteTimeSpan,
            ThreadNamePrefix = "Test",
            LocalQueueCapacity = localQueueCapacity,
        });

    /// <summary>What <paramref name="scheduler"/> lists as queued: its <c>GetScheduledTasks</c>, the debugger's view (protected, so by reflection).</summary>
    public static List<Task> ScheduledTasks(TaskScheduler scheduler) =>
        [.. (IEnumerable<Task>)s_getScheduledTasks.Invoke(scheduler, null)!];

    /// <summary>Waits with a generous timeout so a hang fails the test instead of the run.</summary>
    public static async Task WithTimeout(this Task task, TimeSpan? timeout = null)
    {
        await task.WaitAsync(timeout ?? Timeout);
    }

    public static async Task<T> WithTimeout<T>(this Task<T> task, TimeSpan? timeout = null) =>
        await task.WaitAsync(timeout ?? Timeout);

    /// <summary>
    /// <see cref="WithTimeout(Task, TimeSpan?)"/> for teardown and other waits whose hang would say nothing by itself:
    /// running out fails with a message naming <paramref name="what"/> (a Dispose that hangs otherwise hangs the run).
    /// </summary>
    public static async Task WithTimeout(this Task task, string what, TimeSpan? timeout = null)
    {
        TimeSpan bound = timeout ?? Timeout;
        try
        {
            await task.WaitAsync(bound);
        }
        catch (TimeoutException e) when (!task.IsCompleted)
        {
            throw TimedOut(what, bound, e);
        }
    }

    /// <summary><see cref="WithTimeout(Task, string, TimeSpan?)"/> for a wait whose result the test uses.</summary>
    public static async Task<T> WithTimeout<T>(this Task<T> task, string what, TimeSpan? timeout = null)
    {
        await ((Task)task).WithTimeout(what, timeout);
        return await task;
    }

    /// <summary>
    /// Disposes <paramref name="disposable"/> (a scheduler, a connection) at the end of an <c>await using</c> block through
    /// a bounded wait: a disposal that never ends (workers that never exit after a lost wake-up on the way out, a
    /// connection loop that never stops) fails the test with a message naming <paramref name="what"/> instead of hanging
    /// the run.
    /// </summary>
    public static BoundedDisposal DisposeWithin(
        IAsyncDisposable disposable, [CallerArgumentExpression(nameof(disposable))] string what = "", TimeSpan? timeout = null) =>
        new(disposable, what, timeout ?? Timeout);

    /// <summary>
    /// <see cref="WorkStealingTaskScheduler.Dispose"/> (the joining kind, for tests of it) on another thread, bounded: workers
    /// that never exit fail the test with a message instead of hanging the run in the join.
    /// </summary>
    public static void DisposeBounded(WorkStealingTaskScheduler scheduler)
    {
        Task disposer = Task.Factory.StartNew(scheduler.Dispose, CancellationToken.None, TaskCreationOptions.LongRunning, TaskScheduler.Default);
        if (!disposer.Wait(Timeout))
        {
            throw TimedOut("The scheduler's Dispose (joining the workers)", Timeout);
        }
    }

    private static TimeoutException TimedOut(string what, TimeSpan bound, Exception? inner = null) =>
        new($"{what} did not finish within {bound.TotalSeconds:0} s.", inner);

    /// <summary>
    /// Runs <paramref name="body"/> on a thread of its own (a fresh thread: no thread-statics, no cache id, no worker) and
    /// returns its result; an exception it throws is rethrown here instead of escaping the thread and ending the test host.
    /// </summary>
    public static T RunOnNewThread<T>(Func<T> body)
    {
        T result = default!;
        System.Runtime.ExceptionServices.ExceptionDispatchInfo? failure = null;
        var thread = new Thread(() =>
        {
            try
            {
                result = body();
            }
            catch (Exception e)
            {
                failure = System.Runtime.ExceptionServices.ExceptionDispatchInfo.Capture(e);
            }
        }) { IsBackground = true };
        thread.Start();
        thread.Join(Timeout).Should().BeTrue("the thread finishes");
        failure?.Throw();
        return result;
    }

    /// <inheritdoc cref="RunOnNewThread{T}(Func{T})"/>
    public static void RunOnNewThread(Action body) => RunOnNewThread(() =>
    {
        body();
        return true;
    });

    /// <summary><see cref="DisposeBounded"/> at the end of a <c>using</c> block, for tests that are not async.</summary>
    public static BoundedSchedulerJoin DisposeBoundedOnExit(WorkStealingTaskScheduler scheduler) => new(scheduler);

    /// <summary>See <see cref="DisposeBoundedOnExit"/>.</summary>
    internal readonly struct BoundedSchedulerJoin(WorkStealingTaskScheduler scheduler) : IDisposable
    {
        public void Dispose() => DisposeBounded(scheduler);
    }

    /// <summary>See <see cref="DisposeWithin"/>.</summary>
    internal readonly struct BoundedDisposal(IAsyncDisposable disposable, string what, TimeSpan timeout) : IAsyncDisposable
    {
        public async ValueTask DisposeAsync() =>
            await disposable.DisposeAsync().AsTask().WithTimeout($"DisposeAsync of {what}", timeout);
    }

    /// <summary>
    /// Polls <paramref name="condition"/> until it holds or the generous timeout passes, for state that trails the
    /// awaited work (counters, the last task's side effect); the test's own assertions then report a miss.
    /// </summary>
    public static async Task WaitUntilAsync(Func<bool> condition)
    {
        var deadline = DateTime.UtcNow + Timeout;
        while (!condition() && DateTime.UtcNow < deadline)
        {
            await Task.Delay(1);
        }
    }

    /// <summary>A work item that records where it ran.</summary>
    internal sealed class RecordingWorkItem(Action onExecute) : IThreadPoolWorkItem
    {
        public void Execute() => onExecute();
    }
}
