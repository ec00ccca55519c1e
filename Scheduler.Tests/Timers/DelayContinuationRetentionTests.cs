using System.Runtime.CompilerServices;
using System.Threading.Tasks.Sources;
using Scheduler.Timers;

namespace Scheduler.Tests.Timers;

/// <summary>
/// The work item that carries a completed delay's continuation goes back to its pool once it has run: it must let go of
/// what it carried. Kept, a pooled item pins the awaiter's delegate, its state (for an <c>await</c>, the async method's
/// box, and with it the method's locals) and its <see cref="ExecutionContext"/> (every <see cref="AsyncLocal{T}"/> value)
/// until some later delay reuses it, which may be never.
/// </summary>
public sealed class DelayContinuationRetentionTests
{
    private static readonly TimeSpan Guard = TimeSpan.FromSeconds(10);

    [Fact]
    public void A_run_continuation_keeps_neither_the_awaiters_delegate_nor_its_state_nor_its_execution_context()
    {
        var clock = new ManualClock();
        using var wheel = new TimerWheel(TimeSpan.FromMilliseconds(1), clock, startDriver: false);
        using var ran = new ManualResetEventSlim();

        // Registered on a thread of its own: the AsyncLocal value lives in that thread's context, which ends with it.
        WeakReference[] carried = [];
        var registrar = new Thread(() => carried = RegisterProbes(wheel, ran));
        registrar.Start();
        registrar.Join(Guard).Should().BeTrue();
        carried.Should().HaveCount(3);

        clock.Advance(TimeSpan.FromMilliseconds(10));
        wheel.RunDueTimers();
        ran.Wait(Guard).Should().BeTrue("the delay completed and its continuation ran on the ThreadPool");

        Collected.Await(carried);
        carried[0].IsAlive.Should().BeFalse("the run work item dropped the continuation delegate (and what it captured)");
        carried[1].IsAlive.Should().BeFalse("the run work item dropped the continuation's state");
        carried[2].IsAlive.Should().BeFalse("the run work item dropped the execution context (and its AsyncLocal values)");
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private static WeakReference[] RegisterProbes(TimerWheel wheel, ManualResetEventSlim ran)
    {
        var inContext = new object();
        var local = new AsyncLocal<object> { Value = inContext };
        var captured = new object();
        var state = new object();

#pragma warning disable CA2012 // the ValueTask is taken apart to reach its source, as an awaiter does
        ValueTask delay = wheel.DelayAsync(TimeSpan.FromMilliseconds(5));
        var source = (IValueTaskSource)DelayTestHooks.ValueTaskSource(ref delay)!;
        short token = DelayTestHooks.ValueTaskToken(ref delay);
#pragma warning restore CA2012

        // A delegate of its own (an awaiter passes a static one; a library calling OnCompleted directly may not).
        Action<object?> continuation = s =>
        {
            GC.KeepAlive(captured);
            source.GetResult(token);
            ran.Set();
        };
        source.OnCompleted(continuation, state, token, ValueTaskSourceOnCompletedFlags.FlowExecutionContext);
        local.Value = null!; // the captured context still holds it
        return [new WeakReference(captured), new WeakReference(state), new WeakReference(inContext)];
    }
}
