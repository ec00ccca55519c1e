using System.Diagnostics;

namespace Scheduler.Tests.Scheduling;

/// <summary>
/// The LIFO rescue is the liveness guard of sync-over-async code on the workers, and such code is what starves the .NET
/// ThreadPool too. A watchdog that ran as a ThreadPool timer callback waited behind the blocked pool: a task left in the
/// slot of a blocked worker stayed stranded for as long as the pool was (found in a full run: a stress test's blocked
/// task waited over 5 s for its child while other tests held the pool's threads). The watchdog has a thread of its own.
/// </summary>
/// <remarks>
/// Serial: the test holds every ThreadPool thread, which would stall any test running beside it.
/// </remarks>
[Collection(SerialResourceGroup.Name)]
public sealed class LifoRescueStarvedPoolTests
{
    [Fact]
    public void A_task_stranded_in_the_lifo_slot_is_rescued_while_the_ThreadPool_is_starved()
    {
        // A dedicated thread: the test's own thread may belong to the pool we are about to block.
        (bool Released, TimeSpan Waited)? outcome = null;
        Exception? failure = null;
        var body = new Thread(() =>
        {
            try
            {
                outcome = RunWithThreadPoolBlocked();
            }
            catch (Exception e)
            {
                failure = e;
            }
        });
        body.Start();
        body.Join(TimeSpan.FromSeconds(60)).Should().BeTrue("the test must not hang");
        failure.Should().BeNull();

        outcome!.Value.Released.Should().BeTrue("an idle peer must run the child while its spawner blocks, ThreadPool or not");
        // Timed from the spawn to the child's start, inside the child: the blocked parent's own wake-up after the release
        // is one more thread waiting for a core, which a loaded machine can delay past the bound by itself.
        outcome.Value.Waited.Should().BeLessThan(TimeSpan.FromSeconds(2), "the watchdog looks every {0} ms", WorkStealingTaskScheduler.WatchdogPeriod.TotalMilliseconds);
    }

    private static (bool Released, TimeSpan Waited) RunWithThreadPoolBlocked()
    {
        ThreadPool.GetMinThreads(out int minWorkers, out int minIo);
        ThreadPool.GetMaxThreads(out int maxWorkers, out int maxIo);
        // Not disposed: queued blockers still start (and return at once) after the test has released the pool.
        var releasePool = new ManualResetEventSlim();
        int blockersStarted = 0;
        try
        {
            // No new pool threads from here on (the maximum can go no lower than the minimum), and every existing one
            // takes a blocker: the pool runs nothing else until they are released.
            ThreadPool.SetMaxThreads(Math.Max(minWorkers, Environment.ProcessorCount), maxIo).Should().BeTrue();
            for (int i = 0; i < 256; i++)
            {
                ThreadPool.UnsafeQueueUserWorkItem(_ =>
                {
                    Interlocked.Increment(ref blockersStarted);
                    releasePool.Wait(SchedulerTestHelpers.Timeout);
                }, null);
            }

            // Pool threads that are free take a blocker within microseconds; others are busy already (the test runner's
            // own work), which starves the pool just as well. Nothing to assert: either way it runs nothing new.
            SpinWait.SpinUntil(() => Volatile.Read(ref blockersStarted) > 0, TimeSpan.FromSeconds(1));

            var scheduler = SchedulerTestHelpers.Create(2);
            using var disposeScheduler = SchedulerTestHelpers.DisposeBoundedOnExit(scheduler);
            using var released = new SemaphoreSlim(0);
            long childRanAt = 0;
            Task<(bool Released, long SpawnedAt)> parent = scheduler.Factory.StartNew(() =>
            {
                long spawnedAt = Stopwatch.GetTimestamp();
                // The only task this one spawns: it goes to the LIFO slot, not to the stealable deque.
                scheduler.Factory.StartNew(() =>
                {
                    childRanAt = Stopwatch.GetTimestamp();
                    released.Release();
                });
                bool ok = released.Wait(TimeSpan.FromSeconds(10)); // blocks the worker, as sync-over-async code does
                return (ok, spawnedAt);
            });

            parent.Wait(SchedulerTestHelpers.Timeout).Should().BeTrue();
            (bool ok, long spawnedAt) = parent.Result;
            return (ok, ok ? Stopwatch.GetElapsedTime(spawnedAt, childRanAt) : TimeSpan.MaxValue);
        }
        finally
        {
            releasePool.Set();
            ThreadPool.SetMaxThreads(maxWorkers, maxIo);
            ThreadPool.SetMinThreads(minWorkers, minIo);
        }
    }
}
