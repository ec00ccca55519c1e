using System.Diagnostics;
using Scheduler.Timers;

namespace Scheduler.Tests.Timers;

/// <summary>The wheel as a <see cref="TimeProvider"/>: the BCL's own consumers must work on it unchanged.</summary>
public sealed class TimeProviderTests
{
    private static readonly TimeSpan s_timeout = TimeSpan.FromSeconds(10);

    [Fact]
    public void Timestamps_agree_with_Stopwatch()
    {
        using var wheel = new TimerWheel();
        wheel.TimestampFrequency.Should().Be(Stopwatch.Frequency);
        long before = Stopwatch.GetTimestamp();
        long ours = wheel.GetTimestamp();
        long after = Stopwatch.GetTimestamp();
        ours.Should().BeInRange(before, after);
        wheel.GetElapsedTime(before, after).Should().Be(Stopwatch.GetElapsedTime(before, after));
    }

    [Fact]
    public async Task Task_Delay_with_the_wheel_waits_at_least_the_delay()
    {
        using var wheel = new TimerWheel();
        long start = Stopwatch.GetTimestamp();
        await Task.Delay(TimeSpan.FromMilliseconds(40), wheel).WaitAsync(s_timeout);
        Stopwatch.GetElapsedTime(start).Should().BeGreaterThanOrEqualTo(TimeSpan.FromMilliseconds(40));
        wheel.PendingCount.Should().Be(0);
    }

    [Fact]
    public async Task Task_Delay_with_the_wheel_is_canceled_promptly()
    {
        using var wheel = new TimerWheel();
        using var cts = new CancellationTokenSource();
        Task delay = Task.Delay(TimeSpan.FromHours(1), wheel, cts.Token);
        long start = Stopwatch.GetTimestamp();
        await cts.CancelAsync();
        Func<Task> act = () => delay.WaitAsync(s_timeout);
        (await act.Should().ThrowAsync<TaskCanceledException>()).Which.CancellationToken.Should().Be(cts.Token);
        Stopwatch.GetElapsedTime(start).Should().BeLessThan(TimeSpan.FromSeconds(2));
        wheel.PendingCount.Should().Be(0, "the canceled delay's timer was disposed and unlinked");
    }

    [Fact]
    public async Task CancellationTokenSource_with_the_wheel_cancels_after_its_delay()
    {
        using var wheel = new TimerWheel();
        long start = Stopwatch.GetTimestamp();
        using var cts = new CancellationTokenSource(TimeSpan.FromMilliseconds(30), wheel);
        var canceled = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        cts.Token.Register(() => canceled.TrySetResult());
        await canceled.Task.WaitAsync(s_timeout);
        Stopwatch.GetElapsedTime(start).Should().BeGreaterThanOrEqualTo(TimeSpan.FromMilliseconds(30));

        // CancelAfter reschedules through ITimer.Change.
        using var later = new CancellationTokenSource(Timeout.InfiniteTimeSpan, wheel);
        later.CancelAfter(TimeSpan.FromMilliseconds(10));
        await Task.Delay(Timeout.Infinite, later.Token).ContinueWith(_ => { }, TaskScheduler.Default).WaitAsync(s_timeout);
        later.IsCancellationRequested.Should().BeTrue();
    }

    [Fact]
    public async Task CancelAfter_rearmed_many_times_cancels_only_after_the_last_delay()
    {
        // The timeout pattern through CancellationTokenSource: re-armed and disarmed a hundred thousand times while the
        // driver reconciles the changes, the long arms (relative: measured by the reconciler) never cancel, and the
        // last arm, one of those same long words, is measured from its own call.
        using var wheel = new TimerWheel();
        using var cts = new CancellationTokenSource(Timeout.InfiniteTimeSpan, wheel);
        long canceledAt = 0;
        using CancellationTokenRegistration registration = cts.Token.Register(() => Volatile.Write(ref canceledAt, Stopwatch.GetTimestamp()));
        TimeSpan due = TimeSpan.FromSeconds(1);
        for (int i = 0; i < 100_000; i++)
        {
            cts.CancelAfter(i % 3 == 0 ? TimeSpan.FromSeconds(30) : due);
            cts.CancelAfter(Timeout.InfiniteTimeSpan);
        }

        long lastArm = Stopwatch.GetTimestamp();
        cts.CancelAfter(due);
        cts.IsCancellationRequested.Should().BeFalse("every earlier arm was disarmed");
        var canceled = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        using CancellationTokenRegistration signal = cts.Token.Register(() => canceled.TrySetResult());
        await canceled.Task.WaitAsync(s_timeout);
        Stopwatch.GetElapsedTime(lastArm, Volatile.Read(ref canceledAt)).Should().BeGreaterThanOrEqualTo(due, "never early");
        wheel.PendingCount.Should().Be(0, "the fired timer left the wheel");
    }

    [Fact]
    public async Task PeriodicTimer_with_the_wheel_ticks_and_stops_on_dispose()
    {
        using var wheel = new TimerWheel();
        TimeSpan period = TimeSpan.FromMilliseconds(10);
        using var timer = new PeriodicTimer(period, wheel);
        long start = Stopwatch.GetTimestamp();
        for (int i = 1; i <= 5; i++)
        {
            (await timer.WaitForNextTickAsync().AsTask().WaitAsync(s_timeout)).Should().BeTrue();
            Stopwatch.GetElapsedTime(start).Should().BeGreaterThanOrEqualTo(period * i);
        }

        timer.Dispose();
        (await timer.WaitForNextTickAsync()).Should().BeFalse();
    }
}
