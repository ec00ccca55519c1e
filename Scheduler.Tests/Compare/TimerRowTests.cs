using Scheduler.Benchmarks.Timers;

namespace Scheduler.Tests.Compare;

/// <summary>The timer workloads behind the <c>timers</c> row of <c>compare</c>.</summary>
public sealed class TimerRowTests
{
    /// <summary>
    /// A delay that never completes (a lost timer, the very bug the row could meet) must fail the run within its
    /// timeout: it used to block the compare command for ever, with no table at all.
    /// </summary>
    [Fact]
    public async Task A_delay_that_never_completes_fails_the_run_with_a_timeout_instead_of_hanging_it()
    {
        // The bound leaves room for the run's own Task.Run to start: 200 ms at the suite's start, with the ThreadPool busy
        // with every other test, found all 10 delays unstarted ("10 of 10"). 2 s is not always room either (a loaded CI
        // run held a step off its core for 3.45 s), and a longer bound is waited in full on every run: a run that
        // reports more than the lost delay pending, its Task.Run having started late, is run again (up to 5 runs).
        Task<TimerWorkloadResult> run = StartRunLosingOneDelay();
        for (int attempt = 1; attempt < 5; attempt++)
        {
            await run.Ended().WaitAsync(TimeSpan.FromSeconds(30));
            if (run.Exception?.InnerException is not TimeoutException { Message: string message }
                || message.StartsWith("lost: 1 of 10 delays", StringComparison.Ordinal))
            {
                break;
            }

            run = StartRunLosingOneDelay();
        }

        Func<Task> finish = () => run.WaitAsync(TimeSpan.FromSeconds(30));

        (await finish.Should().ThrowAsync<TimeoutException>()).WithMessage("lost: 1 of 10 delays*");

        static Task<TimerWorkloadResult> StartRunLosingOneDelay()
        {
            var never = new TaskCompletionSource();
            int started = 0;
            return Task.Factory.StartNew(
                () => TimerWorkloads.RunDelays("lost", 10, TimeSpan.FromMilliseconds(1), seed: 1, _ => Interlocked.Increment(ref started) == 5 ? new ValueTask(never.Task) : ValueTask.CompletedTask, TimeSpan.FromSeconds(2)),
                CancellationToken.None,
                TaskCreationOptions.LongRunning,
                TaskScheduler.Default);
        }
    }

    [Fact]
    public void A_failing_delay_fails_the_run_with_its_own_exception()
    {
        Action run = () => TimerWorkloads.RunDelays("faulty", 10, TimeSpan.FromMilliseconds(1), seed: 1, _ => ValueTask.FromException(new InvalidOperationException("timer broke")), TimeSpan.FromSeconds(30));

        run.Should().Throw<InvalidOperationException>().WithMessage("timer broke");
    }
}
