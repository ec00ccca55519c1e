using Scheduler.Tests.Scheduling;
using Scheduler.Timers;

namespace Scheduler.Tests.Timers;

/// <summary>
/// The wheel's entry points called from an application thread whose single-threaded <see cref="SynchronizationContext"/>
/// is blocked until the call's work is done: nothing of the wheel's own (timer callbacks, the BCL's timers built on
/// <see cref="TimeProvider.CreateTimer"/>, a delay awaited with <c>ConfigureAwait(false)</c>) may be posted there, where
/// it would never run. Only the caller's own continuation, awaited with the context, belongs to it.
/// </summary>
public sealed class TimerCallerContextTests
{
    private static readonly TimeSpan Due = TimeSpan.FromMilliseconds(20);
    private static readonly TimeSpan Bound = TimeSpan.FromSeconds(10);

    [Fact]
    public async Task CreateTimer_callback_runs_off_the_creators_context()
    {
        using var wheel = new TimerWheel();
        var blocked = new BlockedSynchronizationContext();
        var fired = new TaskCompletionSource<SynchronizationContext?>(TaskCreationOptions.RunContinuationsAsynchronously);
        ITimer? timer = null;
        blocked.Run(() => timer = wheel.CreateTimer(_ => fired.TrySetResult(SynchronizationContext.Current), null, Due, Timeout.InfiniteTimeSpan));
        await using (timer!)
        {
            (await fired.Task.WithTimeout("the timer's callback", Bound)).Should().BeNull("a callback runs on the ThreadPool, as System.Threading.Timer's does");
        }

        blocked.Posts.Should().Be(0);
    }

    [Fact]
    public async Task DelayAsync_awaited_without_the_context_never_posts_to_it_and_with_it_posts_exactly_the_callers_continuation()
    {
        using var wheel = new TimerWheel();
        var blocked = new BlockedSynchronizationContext();
        await blocked.Start(async () => await wheel.DelayAsync(Due).ConfigureAwait(false)).WithTimeout("DelayAsync with ConfigureAwait(false)", Bound);
        blocked.Posts.Should().Be(0);

        // The contrast: the caller's own continuation does go to its context (and, the context being blocked, never runs).
        Task captured = blocked.Start(async () => await wheel.DelayAsync(Due));
        SpinWait.SpinUntil(() => blocked.Posts == 1, Bound).Should().BeTrue("the caller's continuation is posted to its context");
        captured.IsCompleted.Should().BeFalse();
    }

    [Fact]
    public async Task BCL_timers_on_the_wheel_created_under_a_blocked_context_fire_without_it()
    {
        using var wheel = new TimerWheel();
        var blocked = new BlockedSynchronizationContext();
        var canceled = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        CancellationTokenSource? cts = null;
        Task? delay = null;
        Task? ticks = null;
        PeriodicTimer? periodic = null;
        blocked.Run(() =>
        {
            cts = new CancellationTokenSource(Due, wheel);
            cts.Token.Register(() => canceled.TrySetResult());
            delay = Task.Delay(Due, wheel);
            periodic = new PeriodicTimer(Due, wheel);
        });
        ticks = blocked.Start(async () =>
        {
            for (int i = 0; i < 3; i++)
            {
                await periodic!.WaitForNextTickAsync().ConfigureAwait(false);
            }
        });

        using (cts!)
        using (periodic!)
        {
            await canceled.Task.WithTimeout("new CancellationTokenSource(t, wheel)'s cancellation", Bound);
            await delay!.WithTimeout("Task.Delay(t, wheel)", Bound);
            await ticks.WithTimeout("three ticks of new PeriodicTimer(t, wheel)", Bound);
        }

        blocked.Posts.Should().Be(0);
    }

    [Fact]
    public async Task Timer_DisposeAsync_waiting_for_a_running_callback_never_posts_to_the_callers_context()
    {
        using var wheel = new TimerWheel();
        var blocked = new BlockedSynchronizationContext();
        using var release = new ManualResetEventSlim();
        var running = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        ITimer timer = wheel.CreateTimer(_ =>
        {
            running.TrySetResult();
            release.Wait(Bound);
        }, null, Due, Timeout.InfiniteTimeSpan);
        await running.Task.WithTimeout("the timer's callback", Bound);

        Task disposal = blocked.Start(async () => await timer.DisposeAsync().ConfigureAwait(false));
        disposal.IsCompleted.Should().BeFalse("DisposeAsync waits for the running callback");
        release.Set();
        await disposal.WithTimeout("the timer's DisposeAsync", Bound);
        blocked.Posts.Should().Be(0);
    }
}
