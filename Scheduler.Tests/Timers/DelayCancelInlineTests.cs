using Scheduler.Timers;

namespace Scheduler.Tests.Timers;

/// <summary>
/// A cancellation whose completion runs the awaiter's continuation inline on the cancelling thread (a
/// SynchronizationContext whose Post runs it, or a TaskScheduler whose QueueTask does): the continuation consumes the
/// delay while the cancellation callback is still working on the slot, and disposing the registration cannot wait for
/// a callback running on its own thread.
/// </summary>
public sealed class DelayCancelInlineTests
{
    [Fact]
    public void A_cancellation_whose_continuation_consumes_the_delay_inline_never_touches_the_slots_next_use()
    {
        var clock = new ManualClock();
        using var wheel = new TimerWheel(TimeSpan.FromMilliseconds(1), clock, startDriver: false);
        using var cts = new CancellationTokenSource();
        ValueTask first = wheel.DelayAsync(TimeSpan.FromMilliseconds(10), cts.Token);
        wheel.RunDueTimers(); // linked
        ValueTask second = default;
        Exception? firstOutcome = null;

        OnCompletedInline(first, () =>
        {
            // Inline, inside the cancellation callback: consume the use, let the slot expire out of the wheel (the
            // expiry's batch lets go of it last and frees it), and take the freed slot for a new delay.
            firstOutcome = Outcome(first);
            clock.Advance(TimeSpan.FromMilliseconds(20));
            wheel.RunDueTimers();
            second = wheel.DelayAsync(TimeSpan.FromMilliseconds(5));
        });

        cts.Cancel();
        firstOutcome.Should().BeOfType<OperationCanceledException>();

        clock.Advance(TimeSpan.FromMilliseconds(10));
        wheel.RunDueTimers();
        second.IsCompletedSuccessfully.Should().BeTrue("the new delay is due; the first use's cancellation must not have touched it");
        Outcome(second).Should().BeNull();
        wheel.PendingCount.Should().Be(0);
    }

    /// <summary>Registers <paramref name="continuation"/> under a context that runs it inline on the completing thread.</summary>
    private static void OnCompletedInline(ValueTask delay, Action continuation)
    {
        SynchronizationContext? previous = SynchronizationContext.Current;
        SynchronizationContext.SetSynchronizationContext(new InlineSynchronizationContext());
        try
        {
            delay.GetAwaiter().OnCompleted(continuation);
        }
        finally
        {
            SynchronizationContext.SetSynchronizationContext(previous);
        }
    }

    private static Exception? Outcome(ValueTask delay) => Record.Exception(() => delay.GetAwaiter().GetResult());
}
