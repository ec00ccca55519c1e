using Scheduler.Native;
using Scheduler.Tests.IO;

namespace Scheduler.Tests.Scheduling;

/// <summary>
/// The OS may refuse a compensation thread (a container's pids limit; .NET reports it as <see cref="OutOfMemoryException"/>).
/// The watchdog must survive it, count no thread that never started, and try again after the next delay of standstill:
/// the blocked worker's queued work still runs. Injected through <see cref="FaultInjection.HookForTests"/> on the
/// watchdog's thread.
/// </summary>
[Collection(nameof(FaultInjectionGroup))]
public sealed class CompensationThreadRefusedTests
{
    private const int Refusals = 2;

    [Fact]
    public async Task A_refused_compensation_thread_is_retried_after_the_next_delay_and_the_queued_work_runs()
    {
        var scheduler = new WorkStealingTaskScheduler(new WorkStealingTaskSchedulerOptions
        {
            WorkerCount = 1,
            UseBackgroundThreads = true,
            ThreadNamePrefix = "RefusedCompensation",
            BlockingCompensationDelay = TimeSpan.FromMilliseconds(100),
        });
        using var disposeScheduler = SchedulerTestHelpers.DisposeBoundedOnExit(scheduler);
        using var giveUp = new CancellationTokenSource();
        int asked = 0;
        FaultInjection.HookForTests = name =>
            name == "compensation-thread" && Thread.CurrentThread.Name == "WorkStealing watchdog" && Interlocked.Increment(ref asked) <= Refusals
                ? 1
                : 0;
        try
        {
            bool childRanDuringTheJoin = false;
            Task join = scheduler.Factory.StartNew(() =>
            {
                Task child = Task.Factory.StartNew(() => { }, CancellationToken.None, TaskCreationOptions.None, scheduler);
                child.Wait(giveUp.Token); // not inlined: only a compensation thread can run the child meanwhile
                childRanDuringTheJoin = true;
            });

            // Three delays of standstill (and the watchdog's ticks) are enough; ten seconds leave room for a slow machine.
            giveUp.CancelAfter(TimeSpan.FromSeconds(10));
            await join.WithTimeout("the join", TimeSpan.FromSeconds(20));

            childRanDuringTheJoin.Should().BeTrue("the third attempt started a thread, which ran the child");
            Volatile.Read(ref asked).Should().Be(Refusals + 1, "each refusal was followed by one more attempt, and the one that worked by none");
            scheduler.CompensationThreadsStarted.Should().Be(1, "threads the OS refused are not counted as started");
        }
        finally
        {
            FaultInjection.HookForTests = null;
        }

        // The watchdog thread survived the refusals: a later standstill is compensated as usual.
        using var giveUpAgain = new CancellationTokenSource(TimeSpan.FromSeconds(10));
        bool ranAgain = await scheduler.Factory.StartNew(() =>
        {
            Task child = Task.Factory.StartNew(() => { }, CancellationToken.None, TaskCreationOptions.None, scheduler);
            child.Wait(giveUpAgain.Token);
            return true;
        }).WithTimeout("the second join", TimeSpan.FromSeconds(20));
        ranAgain.Should().BeTrue();

        // Refused threads left no count behind: the live count returns to zero once the started ones leave, and Dispose
        // (which waits for compensation threads) returns.
        await SchedulerTestHelpers.WaitUntilAsync(() => scheduler.LiveCompensationThreads == 0);

        scheduler.LiveCompensationThreads.Should().Be(0);
        await scheduler.DisposeAsync().AsTask().WithTimeout("Dispose", TimeSpan.FromSeconds(20));
    }
}
