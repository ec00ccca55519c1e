using Scheduler.Tests.Scheduling;

namespace Scheduler.Tests.Sources;

/// <summary>
/// With <see cref="WorkStealingTaskSchedulerOptions.UseSynchronizationContext"/> on, every worker has the scheduler's
/// own context installed, so an await on a worker captures that context. The API still promises that the continuation
/// of a waker awaited on a worker is queued to that worker's queue when completed from another thread.
/// </summary>
public sealed class ContextModeDispatchTests
{
    [Fact]
    public async Task A_waker_awaited_on_a_worker_in_context_mode_resumes_on_that_worker()
    {
        var scheduler = new WorkStealingTaskScheduler(new WorkStealingTaskSchedulerOptions
        {
            WorkerCount = 2,
            UseSynchronizationContext = true,
            ThreadNamePrefix = "ContextMode",
        });
        await using var disposeScheduler = SchedulerTestHelpers.DisposeWithin(scheduler);

        for (int i = 0; i < 40; i++)
        {
            var waker = new TestWaker<int>();
            short version = waker.Version;
            int awaitingWorker = -1;
            var completer = new Thread(() =>
            {
                waker.WaitForRegistration();
                // Wake the other worker too, so that both are looking for work when the completion arrives.
                using var otherRan = new ManualResetEventSlim();
                scheduler.EnqueueToWorker(1 - Volatile.Read(ref awaitingWorker), new SchedulerTestHelpers.RecordingWorkItem(otherRan.Set));
                otherRan.Wait(SchedulerTestHelpers.Timeout);
                // A busy owner's inbox may be taken by an idle peer (by design): complete once the owner is idle, when
                // only the owner takes it — and either worker would take it from the global queue.
                SpinWait.SpinUntil(() => scheduler.IsWorkerIdle(Volatile.Read(ref awaitingWorker)), SchedulerTestHelpers.Timeout);
                waker.Core.TrySetResult(version, 1);
            });
            completer.Start();

            var (before, after) = await scheduler.Factory.StartNew(async () =>
            {
                scheduler.TryGetCurrentWorkerIndex(out awaitingWorker);
                await waker.Task;
                scheduler.TryGetCurrentWorkerIndex(out int resumedWorker);
                return (Volatile.Read(ref awaitingWorker), resumedWorker);
            }).Unwrap().WithTimeout();

            completer.Join();
            before.Should().BeGreaterThanOrEqualTo(0);
            after.Should().Be(before, "round {0}: the continuation goes to the awaiting worker's inbox, not to any worker", i);
        }
    }
}
