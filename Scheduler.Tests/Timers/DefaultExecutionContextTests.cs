using Scheduler.Timers;

namespace Scheduler.Tests.Timers;

/// <summary>
/// A timer keeps no reference to the default <see cref="ExecutionContext"/> (DefaultExecutionContext): its callback
/// runs as a ThreadPool work item, which starts in that context anyway, and a new timer saves the store. These pin
/// that the default one is learned from our own threads, that only it is left out, and what the callbacks see.
/// </summary>
public sealed class DefaultExecutionContextTests
{
    private static readonly TimeSpan s_timeout = TimeSpan.FromSeconds(10);

    [Fact]
    public void A_wheels_driver_learns_the_default_context()
    {
        using var wheel = new TimerWheel();
        SpinWait.SpinUntil(() => DefaultExecutionContext.Value is not null, s_timeout).Should().BeTrue("the driver records it first thing");
        DefaultExecutionContext.Value.Should().BeSameAs(OnFreshThread(ExecutionContext.Capture));
    }

    [Fact]
    public void Only_the_default_context_is_left_out_and_callbacks_see_what_was_captured()
    {
        using var wheel = new TimerWheel();
        SpinWait.SpinUntil(() => DefaultExecutionContext.Value is not null, s_timeout).Should().BeTrue();
        var local = new AsyncLocal<string>();
        var seen = new System.Collections.Concurrent.ConcurrentDictionary<string, string?>();
        using var allFired = new CountdownEvent(3);
        TimerCallback record = name =>
        {
            seen[(string)name!] = local.Value;
            allFired.Signal();
        };

        // In the default context (a fresh thread's): nothing is kept.
        var inDefault = (WheelTimer)OnFreshThread(() => wheel.CreateTimer(record, "default", TimeSpan.FromMilliseconds(5), Timeout.InfiniteTimeSpan));
        inDefault.CallbackContext.Should().BeNull();

        // With a value set: that context is kept, and later changes of the creator's value do not reach the callback.
        local.Value = "captured";
        var withValue = (WheelTimer)wheel.CreateTimer(record, "value", TimeSpan.FromMilliseconds(5), Timeout.InfiniteTimeSpan);
        withValue.CallbackContext.Should().NotBeNull().And.NotBeSameAs(DefaultExecutionContext.Value);

        // Flow suppressed: nothing is kept either, and the callback does not see the creator's value.
        WheelTimer suppressed;
        using (ExecutionContext.SuppressFlow())
        {
            suppressed = (WheelTimer)wheel.CreateTimer(record, "suppressed", TimeSpan.FromMilliseconds(5), Timeout.InfiniteTimeSpan);
        }

        suppressed.CallbackContext.Should().BeNull();
        local.Value = "changed later";

        allFired.Wait(s_timeout).Should().BeTrue("all three timers fire");
        seen["default"].Should().BeNull();
        seen["value"].Should().Be("captured");
        seen["suppressed"].Should().BeNull();
        inDefault.Dispose();
        withValue.Dispose();
        suppressed.Dispose();
    }

    /// <summary>Runs <paramref name="body"/> on a thread started without the caller's context (in the default one).</summary>
    private static T OnFreshThread<T>(Func<T> body)
    {
        T result = default!;
        var thread = new Thread(() => result = body());
        thread.UnsafeStart();
        thread.Join();
        return result;
    }
}
