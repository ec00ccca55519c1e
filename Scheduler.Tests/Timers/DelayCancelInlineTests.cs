using System.Collections.Concurrent;
using System.Diagnostics;
using Scheduler.Timers;

using static Scheduler.Tests.Timers.DelayTestHooks;

namespace Scheduler.Tests.Timers;

/// <summary>
/// A cancellation whose completion runs the awaiter's continuation inline on the cancelling thread (a
/// SynchronizationContext whose Post runs it, or a TaskScheduler whose QueueTask does): the continuation consumes the
/// delay while the cancellation callback is still working on the slot, and disposing the registration cannot wait for
/// a callback running on its own thread.
/// </summary>
[Collection(StressGroup.Name)]
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

    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(3)]
    public async Task Cancellations_racing_the_drivers_expiry_with_inline_continuations_that_reuse_the_slots_lose_no_delay(int seed)
    {
        using var wheel = new TimerWheel();
        var random = new Random(seed);
        var reused = new ConcurrentQueue<Task>();
        var budget = Stopwatch.StartNew();
        int rounds = 0;
        while (budget.Elapsed < TimeSpan.FromMilliseconds(500))
        {
            const int Count = 64;
            var sources = new CancellationTokenSource[Count];
            for (int i = 0; i < Count; i++)
            {
                sources[i] = new CancellationTokenSource();
                ValueTask delay = wheel.DelayAsync(TimeSpan.FromMilliseconds(1), sources[i].Token);
                int spin = random.Next(0, 400);
                OnCompletedInline(delay, () =>
                {
                    // Run inline by a cancellation (on this test thread), through the ThreadPool after an expiry. Either
                    // way: consume, linger while the driver may let go of the slot, and take a slot for a new delay.
                    _ = Outcome(delay);
                    Thread.SpinWait(spin);
                    reused.Enqueue(wheel.DelayAsync(TimeSpan.FromMilliseconds(1)).AsTask());
                });
            }

            // Cancel around the deadline, so that some cancellations land while the driver holds the slots in a batch.
            Thread.SpinWait(random.Next(0, 20_000));
            foreach (CancellationTokenSource source in sources.OrderBy(_ => random.Next()))
            {
                source.Cancel();
                source.Dispose();
            }

            rounds++;
        }

        var wait = Stopwatch.StartNew();
        while (reused.Count < rounds * 64 && wait.Elapsed < TimeSpan.FromSeconds(10))
        {
            await Task.Delay(1);
        }

        reused.Count.Should().Be(rounds * 64, "every first delay completed and its continuation ran once");
        Task all = Task.WhenAll(reused);
        (await Task.WhenAny(all, Task.Delay(TimeSpan.FromSeconds(10)))).Should().BeSameAs(all, "no reused slot was marked by an earlier use's cancellation");
        await all;
        wheel.PendingCount.Should().Be(0);
    }

    private static Exception? Outcome(ValueTask delay) => Record.Exception(() => delay.GetAwaiter().GetResult());
}
