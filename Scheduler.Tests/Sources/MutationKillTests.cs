using System.Runtime.CompilerServices;
using System.Runtime.ExceptionServices;
using System.Threading.Tasks.Sources;
using Scheduler.Sources;

namespace Scheduler.Tests.Sources;

/// <summary>
/// Tests written by a manual mutation-testing round: each one kills a mutant of the library (named in its comment) that
/// no other test caught, and passes on the unmutated code.
/// </summary>
public sealed class MutationKillTests
{
    private static readonly TimeSpan Guard = TimeSpan.FromSeconds(10);

    // Kills: Scheduler/Sources/WakerCore.cs:376 (ClearAndAdvance), `_error = null;` removed — a reset core kept the
    // previous operation's exception alive (docs: Reset "clears the outcome"; a pooled owner pins nothing).
    [Fact]
    public void A_reset_core_no_longer_references_the_exception_of_its_previous_operation()
    {
        var waker = new TestWaker<int>();
        WeakReference error = FailAndConsume(waker);
        CollectWhileAlive(error);

        error.IsAlive.Should().BeFalse("Reset clears the outcome, so a pooled owner does not pin its last exception");
        waker.Core.GetStatus(waker.Version).Should().Be(ValueTaskSourceStatus.Pending);
    }

    // Kills: Scheduler/Sources/WakerCore.cs:373 (ClearAndAdvance), `_result = default!;` removed — a reset core of a
    // reference result type kept the previous operation's result alive.
    [Fact]
    public void A_reset_core_no_longer_references_the_result_of_its_previous_operation()
    {
        var waker = new TestWaker<object>();
        WeakReference result = SucceedAndConsume(waker);
        CollectWhileAlive(result);

        result.IsAlive.Should().BeFalse("Reset clears the outcome, so a pooled owner does not pin its last result");
    }

    // Kills: Scheduler/Sources/WakerDispatch.cs:121 (QueueLosingContinuation), the ExecutionContext never captured — a
    // losing registration (stale token, or the operation awaited twice) ran its continuation without the flowed context
    // that FlowExecutionContext asks for (docs: the context is captured and restored around the continuation whenever
    // the flags include FlowExecutionContext); and its mirror, a context captured without the flag.
    [Fact]
    public async Task A_losing_registration_flows_the_execution_context_exactly_when_asked()
    {
        var local = new AsyncLocal<string?>();
        var waker = new TestWaker<int>();
        short stale = unchecked((short)(waker.Version - 1));
        var flowed = new TaskCompletionSource<string?>(TaskCreationOptions.RunContinuationsAsynchronously);
        var notFlowed = new TaskCompletionSource<string?>(TaskCreationOptions.RunContinuationsAsynchronously);

        local.Value = "flowed";
        waker.Core.OnCompleted(_ => flowed.TrySetResult(local.Value), null, stale, ValueTaskSourceOnCompletedFlags.FlowExecutionContext);
        waker.Core.OnCompleted(_ => notFlowed.TrySetResult(local.Value), null, stale, ValueTaskSourceOnCompletedFlags.None);
        local.Value = null;

        (await flowed.Task.WaitAsync(Guard)).Should().Be("flowed", "FlowExecutionContext: the losing continuation runs in the captured context");
        (await notFlowed.Task.WaitAsync(Guard)).Should().BeNull("without FlowExecutionContext nothing is captured");
        waker.Core.HoldsContinuationForTests.Should().BeFalse("a losing registration touches nothing of the core");
    }

    // Kills: Scheduler/Sources/WakerDispatch.cs:149 (Invoke), `ExecutionContext.Restore(previous)` dropped from the
    // finally — a continuation run with a flowed context on a thread that had a context of its own (a
    // SynchronizationContext running its posts there) left the awaiter's context on that thread afterwards.
    [Fact]
    public async Task A_flowed_continuation_run_by_a_context_leaves_the_running_threads_execution_context_as_it_was()
    {
        var (inside, after) = await Task.Run(() =>
        {
            var local = new AsyncLocal<string?>();
            var context = new HeldPostsSynchronizationContext();
            var waker = new TestWaker<int>();
            short version = waker.Version;
            string? seenInside = null;

            local.Value = "awaiter";
            SynchronizationContext? previous = SynchronizationContext.Current;
            SynchronizationContext.SetSynchronizationContext(context);
            try
            {
                waker.Core.OnCompleted(
                    _ => seenInside = local.Value,
                    null,
                    version,
                    ValueTaskSourceOnCompletedFlags.FlowExecutionContext | ValueTaskSourceOnCompletedFlags.UseSchedulingContext);
            }
            finally
            {
                SynchronizationContext.SetSynchronizationContext(previous);
            }

            waker.Core.TrySetResult(version, 1).Should().BeTrue();
            context.Held.Should().Be(1, "the continuation is posted to the captured SynchronizationContext");

            local.Value = "runner";
            context.RunAll();
            string? seenAfter = local.Value;
            local.Value = null;
            return (seenInside, seenAfter);
        }).WaitAsync(Guard);

        inside.Should().Be("awaiter", "FlowExecutionContext: the continuation runs in the awaiter's context");
        after.Should().Be("runner", "the running thread's own context is restored once the continuation returns");
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private static WeakReference FailAndConsume(TestWaker<int> waker)
    {
        var exception = new InvalidDataException("mutation probe");
        short version = waker.Version;
        waker.Core.TrySetException(version, exception).Should().BeTrue();
        waker.Core.Consume(version, out _, out ExceptionDispatchInfo? error);
        error!.SourceException.Should().BeSameAs(exception);
        return new WeakReference(exception);
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private static WeakReference SucceedAndConsume(TestWaker<object> waker)
    {
        object value = new byte[64];
        short version = waker.Version;
        waker.Core.TrySetResult(version, value).Should().BeTrue();
        waker.Core.Consume(version, out object result, out ExceptionDispatchInfo? error);
        error.Should().BeNull();
        result.Should().BeSameAs(value);
        return new WeakReference(value);
    }

    private static void CollectWhileAlive(WeakReference reference)
    {
        for (int round = 0; round < 5 && reference.IsAlive; round++)
        {
            GC.Collect();
            GC.WaitForPendingFinalizers();
            GC.Collect();
        }
    }
}
