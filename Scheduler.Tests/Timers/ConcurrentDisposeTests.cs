using Scheduler.Tests.Sources;
using Scheduler.Timers;

namespace Scheduler.Tests.Timers;

/// <summary>
/// <see cref="TimerWheel.Dispose"/> called more than once at the same time: whichever call returns, the wheel is fully
/// disposed (every pending delay completed), and no call waits for a disposal that waits for it.
/// </summary>
public sealed class ConcurrentDisposeTests
{
    private static readonly TimeSpan s_bound = TimeSpan.FromSeconds(10);

    [Fact]
    public void A_second_Dispose_returns_only_once_the_first_has_completed_every_pending_delay()
    {
        var wheel = new TimerWheel();
        using var context = new GatedSynchronizationContext();
        Task first = AwaitUnder(context, () => wheel.DelayAsync(TimeSpan.FromMinutes(10)));
        Task second = AwaitUnder(context, () => wheel.DelayAsync(TimeSpan.FromMinutes(10)));

        // The first disposer completes one delay and is held inside its context's Post (user code it runs inline).
        var firstDisposer = new Thread(wheel.Dispose) { IsBackground = true };
        firstDisposer.Start();
        context.WaitUntilHeld(s_bound).Should().BeTrue("the first Dispose completes the delays");

        int postsWhenSecondReturned = -1;
        var secondDisposer = new Thread(() =>
        {
            wheel.Dispose();
            postsWhenSecondReturned = context.Posts;
        })
        { IsBackground = true };
        secondDisposer.Start();
        WaitUntilBlockedOrDone(secondDisposer);

        context.Release();
        secondDisposer.Join(s_bound).Should().BeTrue("the second Dispose returns once the first is done");
        firstDisposer.Join(s_bound).Should().BeTrue();
        postsWhenSecondReturned.Should().Be(2, "both delays were completed before any Dispose returned");
        first.Invoking(t => t.Wait(s_bound)).Should().Throw<AggregateException>().WithInnerException<ObjectDisposedException>();
        second.Invoking(t => t.Wait(s_bound)).Should().Throw<AggregateException>().WithInnerException<ObjectDisposedException>();
    }

    [Fact]
    public void Dispose_from_a_continuation_the_first_Dispose_runs_inline_returns_at_once()
    {
        var wheel = new TimerWheel();
        bool disposedAgain = false;
        Task continuation = AwaitUnder(new InlineSynchronizationContext(), () => DisposeAgainAfter(wheel.DelayAsync(TimeSpan.FromMinutes(10))));
        var disposer = new Thread(wheel.Dispose) { IsBackground = true };
        disposer.Start();

        disposer.Join(s_bound).Should().BeTrue("a Dispose nested in the first cannot wait for it");
        disposedAgain.Should().BeTrue();
        continuation.IsCompletedSuccessfully.Should().BeTrue();

        async ValueTask DisposeAgainAfter(ValueTask delay)
        {
            try
            {
                await delay;
            }
            catch (ObjectDisposedException)
            {
                wheel.Dispose();
                disposedAgain = true;
            }
        }
    }

    [Fact]
    public void Dispose_on_the_driver_thread_while_another_Dispose_joins_the_driver_returns_at_once()
    {
        var wheel = new TimerWheel();
        using var entry = new DisposingEntry(wheel);
        lock (wheel.SyncRoot)
        {
            long now = wheel.GetTimestamp();
            wheel.InsertLocked(entry, now, now);
        }

        entry.Firing.Wait(s_bound).Should().BeTrue("the entry is due at once");
        var disposer = new Thread(wheel.Dispose) { IsBackground = true };
        disposer.Start();
        WaitUntilBlockedOrDone(disposer);
        wheel.IsDisposed.Should().BeTrue();
        disposer.IsAlive.Should().BeTrue("Dispose returns only once the driver, still firing, has ended");

        entry.Release.Set();
        disposer.Join(s_bound).Should().BeTrue("the driver's own Dispose does not wait for the Dispose that joins it");
        entry.Returned.IsSet.Should().BeTrue();
        wheel.DriverThread!.IsAlive.Should().BeFalse();
    }

    /// <summary>Starts <paramref name="start"/> and awaits what it returns, with <paramref name="context"/> installed while they register.</summary>
    private static Task AwaitUnder(SynchronizationContext context, Func<ValueTask> start)
    {
        SynchronizationContext? previous = SynchronizationContext.Current;
        SynchronizationContext.SetSynchronizationContext(context);
        try
        {
            // Every await in start and here registers at once, capturing the context installed here.
            return Await(start());
        }
        finally
        {
            SynchronizationContext.SetSynchronizationContext(previous);
        }

        static async Task Await(ValueTask delay) => await delay;
    }

    /// <summary>Waits (bounded) until <paramref name="thread"/> blocks or ends, whichever it does.</summary>
    private static void WaitUntilBlockedOrDone(Thread thread)
    {
        var clock = System.Diagnostics.Stopwatch.StartNew();
        while ((thread.ThreadState & (ThreadState.WaitSleepJoin | ThreadState.Stopped)) == 0)
        {
            clock.Elapsed.Should().BeLessThan(s_bound);
            Thread.Sleep(1);
        }
    }

    /// <summary>An entry whose firing, on the driver thread, waits to be released and then disposes its wheel.</summary>
    private sealed class DisposingEntry(TimerWheel wheel) : TimerEntry, IDisposable
    {
        public ManualResetEventSlim Firing { get; } = new();

        public ManualResetEventSlim Release { get; } = new();

        public ManualResetEventSlim Returned { get; } = new();

        internal override long DeadlineTimestamp { get; set; }

        internal override long DueTick { get; set; }

        internal override long OnExpired(TimerWheel wheel, long nowTimestamp) => 0;

        internal override void Fire(long token)
        {
            Firing.Set();
            Release.Wait(s_bound);
            wheel.Dispose();
            Returned.Set();
        }

        public void Dispose()
        {
            Firing.Dispose();
            Release.Dispose();
            Returned.Dispose();
        }
    }
}
