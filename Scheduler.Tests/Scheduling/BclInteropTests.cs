using System.Threading.Channels;

namespace Scheduler.Tests.Scheduling;

/// <summary>
/// The BCL patterns people drop the scheduler into (docs/scheduling.md, "Where code runs"): which of them come back
/// to the workers, and the two that leave by the BCL's design.
/// </summary>
public sealed class BclInteropTests
{
    [Fact]
    public async Task Parallel_ForEachAsync_runs_every_body_on_workers_and_its_awaits_come_back()
    {
        var scheduler = SchedulerTestHelpers.Create(2);
        await using var disposeScheduler = SchedulerTestHelpers.DisposeWithin(scheduler);
        var hits = new int[2_000];
        int offScheduler = 0;

        await Parallel.ForEachAsync(
            Enumerable.Range(0, hits.Length),
            new ParallelOptions { TaskScheduler = scheduler, MaxDegreeOfParallelism = 4 },
            async (i, cancellationToken) =>
            {
                Count(ref offScheduler, scheduler);
                await Task.Yield();
                Count(ref offScheduler, scheduler);
                if (i % 100 == 0)
                {
                    await Task.Delay(1, cancellationToken); // completes on a timer thread
                    Count(ref offScheduler, scheduler);
                }

                Interlocked.Increment(ref hits[i]);
            }).WithTimeout();

        hits.Should().OnlyContain(h => h == 1);
        offScheduler.Should().Be(0);
    }

    [Fact]
    public async Task Parallel_Invoke_from_a_worker_runs_every_action_on_workers()
    {
        var scheduler = SchedulerTestHelpers.Create(2);
        await using var disposeScheduler = SchedulerTestHelpers.DisposeWithin(scheduler);
        var ran = new int[16];
        int offScheduler = 0;

        await scheduler.Factory.StartNew(() =>
        {
            Action[] actions = Enumerable.Range(0, ran.Length).Select(i => (Action)(() =>
            {
                Interlocked.Increment(ref ran[i]);
                Count(ref offScheduler, scheduler);
            })).ToArray();
            Parallel.Invoke(new ParallelOptions { TaskScheduler = scheduler }, actions); // blocks a worker: inlining keeps it safe
        }).WithTimeout();

        ran.Should().OnlyContain(r => r == 1);
        offScheduler.Should().Be(0);
    }

    [Fact]
    public async Task Channel_reads_awaited_on_the_scheduler_resume_there_when_a_foreign_thread_writes()
    {
        var scheduler = SchedulerTestHelpers.Create(2);
        await using var disposeScheduler = SchedulerTestHelpers.DisposeWithin(scheduler);
        const int Items = 300;
        Channel<int> channel = Channel.CreateUnbounded<int>(new UnboundedChannelOptions { SingleReader = true });
        int offScheduler = 0;
        int suspended = 0;
        int readCount = 0;

        Task<List<int>> reading = scheduler.Factory.StartNew(async () =>
        {
            var received = new List<int>(Items);
            for (int i = 0; i < Items; i++)
            {
                ValueTask<int> read = channel.Reader.ReadAsync();
                if (!read.IsCompleted)
                {
                    suspended++;
                }

                received.Add(await read);
                Count(ref offScheduler, scheduler);
                Interlocked.Increment(ref readCount);
            }

            return received;
        }).Unwrap();

        var writer = new Thread(() =>
        {
            for (int i = 0; i < Items; i++)
            {
                if (i % 10 == 0)
                {
                    // Let the reader drain what was written and suspend, so the next write completes its await.
                    SpinWait.SpinUntil(() => Volatile.Read(ref readCount) == i, TimeSpan.FromSeconds(5));
                    Thread.Sleep(2);
                }

                channel.Writer.TryWrite(i);
            }
        })
        { IsBackground = true, Name = "channel writer" };
        writer.Start();

        (await reading.WithTimeout()).Should().Equal(Enumerable.Range(0, Items));
        offScheduler.Should().Be(0);
        suspended.Should().BeGreaterThan(0, "some reads must have waited for the foreign writer, or the test proves nothing");
    }

    [Fact]
    public async Task SemaphoreSlim_WaitAsync_released_by_a_foreign_thread_resumes_on_the_scheduler()
    {
        var scheduler = SchedulerTestHelpers.Create(2);
        await using var disposeScheduler = SchedulerTestHelpers.DisposeWithin(scheduler);
        using var gate = new SemaphoreSlim(0);
        const int Rounds = 50;
        int suspended = 0;

        Task<bool[]> waiting = scheduler.Factory.StartNew(async () =>
        {
            var onScheduler = new bool[Rounds];
            for (int i = 0; i < Rounds; i++)
            {
                Task wait = gate.WaitAsync();
                if (!wait.IsCompleted)
                {
                    suspended++;
                }

                await wait;
                onScheduler[i] = OnScheduler(scheduler);
            }

            return onScheduler;
        }).Unwrap();

        var releaser = new Thread(() =>
        {
            for (int i = 0; i < Rounds; i++)
            {
                Thread.Sleep(1);
                gate.Release();
            }
        })
        { IsBackground = true, Name = "semaphore releaser" };
        releaser.Start();

        (await waiting.WithTimeout()).Should().OnlyContain(on => on);
        suspended.Should().BeGreaterThan(0, "some waits must have been released by the foreign thread, or the test proves nothing");
    }

    [Fact]
    public async Task AsyncLocal_values_flow_into_tasks_and_across_their_awaits_and_do_not_leak_out()
    {
        var scheduler = SchedulerTestHelpers.Create(2);
        await using var disposeScheduler = SchedulerTestHelpers.DisposeWithin(scheduler);
        var local = new AsyncLocal<string?> { Value = "caller" };

        string?[] seen = await scheduler.Factory.StartNew(async () =>
        {
            string? atStart = local.Value;
            await Task.Yield();
            string? afterYield = local.Value;
            await Task.Delay(1);
            string? afterDelay = local.Value;
            local.Value = "task"; // the task's own change stays in the task
            return new[] { atStart, afterYield, afterDelay };
        }).Unwrap().WithTimeout();

        seen.Should().Equal("caller", "caller", "caller");
        local.Value.Should().Be("caller");
        (await scheduler.Factory.StartNew(() => local.Value).WithTimeout()).Should().Be("caller", "a later task sees the caller's value, not the earlier task's change");
    }

    [Fact]
    public async Task ConfigureAwait_false_leaves_the_scheduler_as_the_BCL_defines()
    {
        // Not ours to change, but users ask: ConfigureAwait(false) drops the captured scheduler, so the code after it
        // runs wherever the awaited task completed (here a timer thread, or the ThreadPool), not on a worker.
        var scheduler = SchedulerTestHelpers.Create(2);
        await using var disposeScheduler = SchedulerTestHelpers.DisposeWithin(scheduler);

        (bool Before, bool After) where = await scheduler.Factory.StartNew(async () =>
        {
            bool before = OnScheduler(scheduler);
            await Task.Delay(5).ConfigureAwait(false);
            return (before, scheduler.IsWorkerThread || TaskScheduler.Current == scheduler);
        }).Unwrap().WithTimeout();

        where.Before.Should().BeTrue();
        where.After.Should().BeFalse();
    }

    [Fact]
    public async Task Task_Run_inside_a_worker_goes_to_the_ThreadPool_as_the_BCL_defines()
    {
        // Task.Run always targets TaskScheduler.Default; Factory.StartNew without a scheduler uses the current one.
        var scheduler = SchedulerTestHelpers.Create(2);
        await using var disposeScheduler = SchedulerTestHelpers.DisposeWithin(scheduler);

        (bool ViaTaskRun, bool ViaCurrentFactory) where = await scheduler.Factory.StartNew(async () =>
        {
            bool viaTaskRun = await Task.Run(() => OnScheduler(scheduler));
            bool viaCurrentFactory = await Task.Factory.StartNew(() => OnScheduler(scheduler));
            return (viaTaskRun, viaCurrentFactory);
        }).Unwrap().WithTimeout();

        where.ViaTaskRun.Should().BeFalse();
        where.ViaCurrentFactory.Should().BeTrue();
    }

    private static bool OnScheduler(WorkStealingTaskScheduler scheduler) =>
        scheduler.IsWorkerThread && TaskScheduler.Current == scheduler;

    private static void Count(ref int offScheduler, WorkStealingTaskScheduler scheduler)
    {
        if (!OnScheduler(scheduler))
        {
            Interlocked.Increment(ref offScheduler);
        }
    }
}
