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

        // Timed around Task.Delay's cancellation callback (which cancels the delay, then disposes its timer on the wheel),
        // on the cancelling thread: CancelAsync runs the cancel on the ThreadPool, and the test resumes from the awaits
        // below on a pool or xunit thread, each of which a loaded run can hand out seconds late. A token runs its
        // callbacks last registered first: the one registered before the delay's runs after it, the one after, before.
        (long At, bool DelayCanceled) cancelEnded = default;
        Task? delay = null;
        using CancellationTokenRegistration clockStop = cts.Token.Register(() => cancelEnded = (Stopwatch.GetTimestamp(), delay!.IsCanceled));
        delay = Task.Delay(TimeSpan.FromHours(1), wheel, cts.Token);
        (long At, bool DelayPending) cancelStarted = default;
        using CancellationTokenRegistration clockStart = cts.Token.Register(() => cancelStarted = (Stopwatch.GetTimestamp(), !delay.IsCompleted));
        await cts.CancelAsync();
        Func<Task> act = () => delay.WaitAsync(s_timeout);
        (await act.Should().ThrowAsync<TaskCanceledException>()).Which.CancellationToken.Should().Be(cts.Token);
        cancelStarted.DelayPending.Should().BeTrue("the clock starts before the delay's cancellation callback");
        cancelEnded.DelayCanceled.Should().BeTrue("the clock stops after the delay's cancellation callback");
        // Generous: the cancelling thread itself can be held off a loaded machine's cores for seconds between the two
        // readings (3.45 s measured for a step of milliseconds in a CI run); the delay it cancels is an hour long.
        Stopwatch.GetElapsedTime(cancelStarted.At, cancelEnded.At).Should().BeLessThan(TimeSpan.FromSeconds(10));
        wheel.PendingCount.Should().Be(0, "the canceled delay's timer was disposed and unlinked");
    }

    [Fact]
    public async Task Task_WaitAsync_with_the_wheel_times_out_no_earlier_than_its_timeout_and_passes_a_result_that_comes_first()
    {
        using var wheel = new TimerWheel();
        var never = new TaskCompletionSource<int>(TaskCreationOptions.RunContinuationsAsynchronously);
        long start = Stopwatch.GetTimestamp();
        Func<Task> timingOut = () => never.Task.WaitAsync(TimeSpan.FromMilliseconds(30), wheel);
        await timingOut.Should().ThrowAsync<TimeoutException>();
        Stopwatch.GetElapsedTime(start).Should().BeGreaterThanOrEqualTo(TimeSpan.FromMilliseconds(30));

        var soon = new TaskCompletionSource<int>(TaskCreationOptions.RunContinuationsAsynchronously);
        Task<int> waiting = soon.Task.WaitAsync(TimeSpan.FromHours(1), wheel);
        wheel.PendingCount.Should().Be(1, "WaitAsync arms one timer on the wheel");
        soon.SetResult(7);
        (await waiting.WaitAsync(s_timeout)).Should().Be(7);
        await Scheduling.SchedulerTestHelpers.WaitUntilAsync(() => wheel.PendingCount == 0); // the BCL disposes it right after completing
        wheel.PendingCount.Should().Be(0, "the result that came first disposed the timeout's timer");
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
        await Task.Delay(Timeout.Infinite, later.Token).Ended().WaitAsync(s_timeout);
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

        // One callback that records the time and then signals: a CancellationTokenSource runs its callbacks in reverse
        // order of registration, so a separate signal registered later ran first and the test read the time before it
        // was recorded (seen: 0).
        var canceled = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        using CancellationTokenRegistration registration = cts.Token.Register(() =>
        {
            Volatile.Write(ref canceledAt, Stopwatch.GetTimestamp());
            canceled.TrySetResult();
        });
        TimeSpan due = TimeSpan.FromSeconds(1);
        for (int i = 0; i < 100_000; i++)
        {
            cts.CancelAfter(i % 3 == 0 ? TimeSpan.FromSeconds(30) : due);
            cts.CancelAfter(Timeout.InfiniteTimeSpan);
        }

        // Checked before the last arm: after it, a thread held off its core for the 1 s due time (a loaded machine) would
        // see that arm's own cancellation. An earlier arm left standing would still fire less than 1 s after the last one.
        cts.IsCancellationRequested.Should().BeFalse("every earlier arm was disarmed");
        long lastArm = Stopwatch.GetTimestamp();
        cts.CancelAfter(due);
        await canceled.Task.WaitAsync(s_timeout);
        Stopwatch.GetElapsedTime(lastArm, Volatile.Read(ref canceledAt)).Should().BeGreaterThanOrEqualTo(due, "never early");
        wheel.PendingCount.Should().Be(0, "the fired timer left the wheel");
    }

    [Fact]
    public async Task PeriodicTimer_with_the_wheel_ticks_and_stops_on_dispose()
    {
        using var wheel = new TimerWheel();
        TimeSpan period = TimeSpan.FromMilliseconds(10);
        long start = Stopwatch.GetTimestamp(); // before the timer: its first period counts from inside the constructor
        using var timer = new PeriodicTimer(period, wheel);
        for (int i = 1; i <= 5; i++)
        {
            (await timer.WaitForNextTickAsync().AsTask().WaitAsync(s_timeout)).Should().BeTrue();
            Stopwatch.GetElapsedTime(start).Should().BeGreaterThanOrEqualTo(period * i);
        }

        timer.Dispose();
        (await timer.WaitForNextTickAsync()).Should().BeFalse();
    }

    public static TheoryData<long> NegativeTimerArguments => new() { -1, -9_999, -10_000, -10_001, -19_999, -20_000, -50_000 };

    [Theory]
    [MemberData(nameof(NegativeTimerArguments))]
    public async Task Negative_timer_arguments_are_accepted_or_refused_as_by_TimeProvider_System(long ticks)
    {
        // The system provider goes by whole milliseconds truncated toward zero: above -1 ms is zero (fire now), down to
        // -2 ms exclusive is Timeout.Infinite (never), -2 ms or less throws. Code written against TimeProvider (a due time
        // computed as deadline - now, a hair past) must behave the same on the wheel.
        TimeSpan value = TimeSpan.FromTicks(ticks);
        long milliseconds = (long)value.TotalMilliseconds;
        using var wheel = new TimerWheel();
        foreach (TimeProvider provider in new TimeProvider[] { TimeProvider.System, wheel })
        {
            var fired = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            Func<ITimer> createDue = () => provider.CreateTimer(_ => fired.TrySetResult(), null, value, Timeout.InfiniteTimeSpan);
            Func<ITimer> createPeriod = () => provider.CreateTimer(_ => { }, null, Timeout.InfiniteTimeSpan, value);
            if (milliseconds < -1)
            {
                createDue.Should().Throw<ArgumentOutOfRangeException>().WithParameterName("dueTime");
                createPeriod.Should().Throw<ArgumentOutOfRangeException>().WithParameterName("period");
                using ITimer disarmed = provider.CreateTimer(_ => { }, null, Timeout.InfiniteTimeSpan, Timeout.InfiniteTimeSpan);
                disarmed.Invoking(t => t.Change(value, Timeout.InfiniteTimeSpan)).Should().Throw<ArgumentOutOfRangeException>().WithParameterName("dueTime");
                continue;
            }

            createPeriod().Dispose();
            using ITimer timer = createDue();
            if (milliseconds == 0)
            {
                await fired.Task.WaitAsync(s_timeout);
                fired = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
                timer.Change(value, Timeout.InfiniteTimeSpan).Should().BeTrue();
                await fired.Task.WaitAsync(s_timeout);
            }
            else
            {
                timer.Change(value, Timeout.InfiniteTimeSpan).Should().BeTrue();
                await Task.Delay(30);
                fired.Task.IsCompleted.Should().BeFalse($"{provider.GetType().Name}: -1 ms after truncation is Timeout.Infinite");
            }
        }
    }
}
