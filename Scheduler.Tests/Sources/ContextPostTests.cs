using System.Threading.Tasks.Sources;
using Scheduler.Sources;
using Scheduler.Tests.Scheduling;

namespace Scheduler.Tests.Sources;

/// <summary>
/// A continuation captured with a <see cref="SynchronizationContext"/> goes to its <c>Post</c>. When <c>Post</c>
/// throws, the waker must tell a context that refused (the continuation never ran: it still must, elsewhere) from one
/// that ran it inline and let its exception out (it ran: never run it again).
/// </summary>
public sealed class ContextPostTests
{
    [Fact]
    public async Task A_context_that_refuses_the_post_still_gets_the_continuation_run_once_on_the_ThreadPool()
    {
        int runs = 0;
        bool onThreadPool = false;
        var ran = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        PooledValueTaskSource<int> source = PooledValueTaskSource<int>.Rent();
        RegisterUnder(new ThrowingSynchronizationContext(runFirst: false), source, () =>
        {
            onThreadPool = Thread.CurrentThread.IsThreadPoolThread;
            Interlocked.Increment(ref runs);
            ran.TrySetResult();
        });

        source.TrySetResult(1).Should().BeTrue();

        await ran.Task.WithTimeout();
        onThreadPool.Should().BeTrue();
        await Task.Delay(100);
        Volatile.Read(ref runs).Should().Be(1);
    }

    [Fact]
    public async Task A_continuation_the_context_ran_inline_and_that_threw_is_not_run_again_and_goes_unhandled()
    {
        using UnhandledExceptions.Tolerated unhandled = UnhandledExceptions.Tolerate(e => e is ContinuationFailure);
        int runs = 0;
        PooledValueTaskSource<int> source = PooledValueTaskSource<int>.Rent();
        RegisterUnder(new ThrowingSynchronizationContext(runFirst: true), source, () =>
        {
            Interlocked.Increment(ref runs);
            throw new ContinuationFailure();
        });

        // The completing thread (here the test's; a reactor or a timer driver in life) sees nothing thrown.
        source.TrySetResult(1).Should().BeTrue();

        await SchedulerTestHelpers.WaitUntilAsync(() => unhandled.Seen);
        unhandled.Seen.Should().BeTrue("the continuation's exception goes where one escaping a ThreadPool work item goes");
        await Task.Delay(200); // a second run, if queued, has had time to happen
        Volatile.Read(ref runs).Should().Be(1, "the continuation ran once, inline in Post; queueing it again would run it twice");
    }

    [Fact]
    public async Task A_continuation_a_foreign_scheduler_ran_inline_before_QueueTask_threw_is_not_run_again()
    {
        // What StartNew throws when QueueTask fails after running the task: the TPL tries to fault a task that already
        // finished, and .NET 10 ends up throwing InvalidCastException from RunContinuations instead of the documented
        // TaskSchedulerException. Either way it must surface, once.
        using UnhandledExceptions.Tolerated unhandled = UnhandledExceptions.Tolerate(e => e is TaskSchedulerException { InnerException: SchedulerFailure } or InvalidCastException);
        int runs = 0;
        var scheduler = new RunsThenThrowsTaskScheduler();
        PooledValueTaskSource<int> source = PooledValueTaskSource<int>.Rent();
        await Task.Factory.StartNew(
            // Inline on the test's thread, whose SynchronizationContext would take precedence: registered without it,
            // the await captures the scheduler.
            () => RegisterUnder(null, source, () => Interlocked.Increment(ref runs)),
            CancellationToken.None,
            TaskCreationOptions.None,
            scheduler);

        scheduler.ThrowAfterRunning = true;
        source.TrySetResult(1).Should().BeTrue();

        await SchedulerTestHelpers.WaitUntilAsync(() => unhandled.Seen);
        unhandled.Seen.Should().BeTrue("the scheduler's failure is not lost");
        await Task.Delay(200); // a second run, if queued, has had time to happen
        Volatile.Read(ref runs).Should().Be(1, "the scheduler ran the continuation before it threw; queueing it again would run it twice");
    }

    private static void RegisterUnder(SynchronizationContext? context, IValueTaskSource<int> source, Action continuation)
    {
        SynchronizationContext? previous = SynchronizationContext.Current;
        SynchronizationContext.SetSynchronizationContext(context);
        try
        {
            short version = ((PooledValueTaskSource<int>)source).Version;
            source.OnCompleted(static state => ((Action)state!)(), continuation, version, ValueTaskSourceOnCompletedFlags.UseSchedulingContext);
        }
        finally
        {
            SynchronizationContext.SetSynchronizationContext(previous);
        }
    }

    // Not a DeliberateTestException: those are absorbed before a Tolerate scope counts them.
    private sealed class ContinuationFailure() : Exception("a continuation that throws");

    private sealed class SchedulerFailure() : Exception("this scheduler fails after running the task");

    /// <summary>Runs every task inline in <c>QueueTask</c>, then (once told) throws.</summary>
    private sealed class RunsThenThrowsTaskScheduler : TaskScheduler
    {
        public bool ThrowAfterRunning { get; set; }

        protected override void QueueTask(Task task)
        {
            TryExecuteTask(task);
            if (ThrowAfterRunning)
            {
                throw new SchedulerFailure();
            }
        }

        protected override bool TryExecuteTaskInline(Task task, bool taskWasPreviouslyQueued) => TryExecuteTask(task);

        protected override IEnumerable<Task>? GetScheduledTasks() => [];
    }

    /// <summary>A context whose <c>Post</c> throws, after running the callback inline (<c>runFirst</c>) or without running it.</summary>
    private sealed class ThrowingSynchronizationContext(bool runFirst) : SynchronizationContext
    {
        public override void Post(SendOrPostCallback d, object? state)
        {
            if (runFirst)
            {
                d(state);
            }

            throw new InvalidOperationException("this context takes no posts");
        }
    }
}
