using Scheduler.Tests.Scheduling;
using Scheduler.Timers;

namespace Scheduler.Tests.Timers;

/// <summary>
/// Disposal called from the wheel's own callbacks and continuations: a timer disposing itself (awaiting its
/// <c>DisposeAsync</c> asynchronously, as <see cref="System.Threading.Timer"/> allows), a callback disposing the wheel,
/// and a delay's continuation on a worker disposing the wheel. None may wait for itself.
/// </summary>
public sealed class TimerReentrancyTests
{
    private static readonly TimeSpan Due = TimeSpan.FromMilliseconds(10);
    private static readonly TimeSpan Bound = TimeSpan.FromSeconds(10);

    [Fact]
    public async Task A_callback_awaiting_its_own_timers_DisposeAsync_completes_once_it_has_returned()
    {
        using var wheel = new TimerWheel();
        var disposed = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        ITimer? timer = null;
        using var created = new ManualResetEventSlim();
        timer = wheel.CreateTimer(async _ =>
        {
            created.Wait(Bound);
            await timer!.DisposeAsync().ConfigureAwait(false); // the callback returns here: no callback runs any more
            disposed.TrySetResult();
        }, null, Due, Due);
        created.Set();
        await disposed.Task.WithTimeout("the timer's DisposeAsync awaited in its own callback", Bound);
    }

    [Fact]
    public async Task A_callback_disposing_the_wheel_returns_and_stops_every_other_timer()
    {
        var wheel = new TimerWheel();
        var disposedByCallback = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        int otherFirings = 0;
        using ITimer other = wheel.CreateTimer(_ => Interlocked.Increment(ref otherFirings), null, Due, Due);
        using ITimer disposer = wheel.CreateTimer(_ =>
        {
            wheel.Dispose();
            disposedByCallback.TrySetResult();
        }, null, TimeSpan.FromMilliseconds(50), Timeout.InfiniteTimeSpan);

        await disposedByCallback.Task.WithTimeout("the wheel's Dispose called from a timer callback", Bound);
        await Task.Delay(50); // a callback that had started before Dispose returned counts itself meanwhile

        // ...or later, when a loaded machine holds its thread off the core: settled once none is running.
        _ = TimerCallbacks.WaitUntilIdle(Bound, other);
        int settled = Volatile.Read(ref otherFirings);
        await Task.Delay(100);
        Volatile.Read(ref otherFirings).Should().Be(settled, "no callback starts once Dispose has returned");
        Action create = () => wheel.CreateTimer(_ => { }, null, Due, Timeout.InfiniteTimeSpan);
        create.Should().Throw<ObjectDisposedException>();
    }

    [Fact]
    public async Task A_delays_continuation_on_a_worker_disposing_the_wheel_completes_the_other_delays()
    {
        using var scheduler = new WorkStealingTaskScheduler(2);
        var wheel = new TimerWheel();
        Task pending = scheduler.Factory.StartNew(async () => await wheel.DelayAsync(TimeSpan.FromHours(1))).Unwrap();
        Task disposer = scheduler.Factory.StartNew(async () =>
        {
            await wheel.DelayAsync(Due);
            wheel.Dispose();
        }).Unwrap();

        await disposer.WithTimeout("the wheel's Dispose called from a delay's continuation", Bound);
        Func<Task> other = () => pending.WithTimeout("the hour-long delay, ended by the disposal", Bound);
        await other.Should().ThrowAsync<ObjectDisposedException>();
    }
}
