using Scheduler.Sources;
using Scheduler.Tests.Scheduling;
using Scheduler.Timers;

namespace Scheduler.Tests.Sources;

/// <summary>
/// A waker awaited without a context (<c>ConfigureAwait(false)</c>) resumes on the worker that awaited it. A compensation
/// thread, which stands in for a blocked worker and runs its scheduler's queued work, gets the same: its continuation
/// goes back to the scheduler, not to the ThreadPool. (From a pool thread the next such await goes to the pool again, so
/// a connection loop that ran once on a compensation thread left the scheduler for good.)
/// </summary>
public sealed class CompensationThreadWakerTests
{
    public static TheoryData<string> Awaitables => ["pooled waker", "wheel delay"];

    [Theory]
    [MemberData(nameof(Awaitables))]
    public async Task An_await_without_context_on_a_compensation_thread_resumes_on_the_scheduler(string awaitable)
    {
        var scheduler = new WorkStealingTaskScheduler(new WorkStealingTaskSchedulerOptions
        {
            WorkerCount = 1,
            ThreadNamePrefix = "CompensationWaker",
            BlockingCompensationDelay = TimeSpan.FromMilliseconds(50),
        });
        await using var disposeScheduler = SchedulerTestHelpers.DisposeWithin(scheduler);
        using var wheel = new TimerWheel();
        using var release = new ManualResetEventSlim();
        using var never = new CancellationTokenSource();

        // The only worker blocks (a wait the BCL does not inline), so the watchdog starts a compensation thread for
        // the work queued behind it.
        Task blocker = scheduler.Factory.StartNew(() => release.Wait(never.Token));
        try
        {
            Task<(bool OnCompensation, bool OnScheduler, bool OnPool)[]> body = scheduler.Factory.StartNew(async () =>
            {
                var where = new List<(bool, bool, bool)> { Where(scheduler) };
                for (int i = 0; i < 3; i++)
                {
                    // Awaited here, in the body: an async method of its own between them would add a Task await, and
                    // the BCL never inlines a ConfigureAwait(false) continuation on a thread whose current
                    // TaskScheduler is not the default (every thread of this scheduler), so it would go to the
                    // ThreadPool whatever the waker did.
                    if (awaitable == "wheel delay")
                    {
                        await wheel.DelayAsync(TimeSpan.FromMilliseconds(20)).ConfigureAwait(false); // the wheel's driver completes it
                    }
                    else
                    {
                        await PooledCompletedLater().ConfigureAwait(false);
                    }

                    where.Add(Where(scheduler));
                }

                return where.ToArray();
            }).Unwrap();

            (bool OnCompensation, bool OnScheduler, bool OnPool)[] seen = await body.WithTimeout("the awaits on the compensation thread", SchedulerTestHelpers.Timeout);
            seen[0].OnCompensation.Should().BeTrue("the body starts on a compensation thread while the only worker blocks");
            seen.Should().OnlyContain(w => w.OnScheduler && !w.OnPool, "every continuation comes back to the scheduler");
        }
        finally
        {
            release.Set();
            await blocker.WithTimeout();
        }
    }

    private static (bool OnCompensation, bool OnScheduler, bool OnPool) Where(WorkStealingTaskScheduler scheduler) =>
        (scheduler.IsCompensationThread, scheduler.IsCompensationThread || scheduler.IsWorkerThread, Thread.CurrentThread.IsThreadPoolThread);

    // Completed from another thread after the await registers (a ThreadPool thread).
    private static ValueTask<int> PooledCompletedLater()
    {
        var source = PooledValueTaskSource<int>.Rent();
        ValueTask<int> pending = source.Task;
        _ = Task.Run(async () =>
        {
            await Task.Delay(20);
            source.TrySetResult(1);
        });
        return pending;
    }
}
