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

    private static void RegisterUnder(SynchronizationContext context, IValueTaskSource<int> source, Action continuation)
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
