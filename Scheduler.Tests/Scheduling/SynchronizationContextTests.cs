namespace Scheduler.Tests.Scheduling;

/// <summary>The opt-in synchronization-context mode (see WorkStealingTaskSchedulerOptions.UseSynchronizationContext).</summary>
public sealed class SynchronizationContextTests
{
    private static WorkStealingTaskScheduler Create(int workers) =>
        new(new WorkStealingTaskSchedulerOptions { WorkerCount = workers, UseSynchronizationContext = true, ThreadNamePrefix = "Ctx" });

    [Fact]
    public void The_context_is_off_by_default()
    {
        new WorkStealingTaskSchedulerOptions().UseSynchronizationContext.Should().BeFalse();
        var scheduler = SchedulerTestHelpers.Create(1);
        using var disposeScheduler = SchedulerTestHelpers.DisposeBoundedOnExit(scheduler);
        scheduler.Factory.StartNew(() => SynchronizationContext.Current).Result.Should().BeNull();
    }

    [Fact]
    public async Task Awaits_resume_on_workers_and_posted_code_sees_the_scheduler()
    {
        var scheduler = Create(2);
        await using var disposeScheduler = SchedulerTestHelpers.DisposeWithin(scheduler);
        var foreign = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        Task<bool[]> observations = scheduler.Factory.StartNew(async () =>
        {
            var seen = new List<bool>();
            await Task.Yield();
            seen.Add(scheduler.IsWorkerThread && TaskScheduler.Current == scheduler);
            await Task.Delay(5);
            seen.Add(scheduler.IsWorkerThread && TaskScheduler.Current == scheduler);
            await foreign.Task;
            seen.Add(scheduler.IsWorkerThread && TaskScheduler.Current == scheduler);
            return seen.ToArray();
        }).Unwrap();

        await Task.Delay(20);
        new Thread(() => foreign.SetResult()).Start();
        (await observations.WithTimeout()).Should().Equal(true, true, true);
    }

    [Fact]
    public void A_post_in_the_default_execution_context_allocates_nothing_and_one_with_an_AsyncLocal_carries_it()
    {
        var scheduler = Create(2);
        using var disposeScheduler = SchedulerTestHelpers.DisposeBoundedOnExit(scheduler);
        SynchronizationContext context = scheduler.Factory.StartNew(() => SynchronizationContext.Current!).Result;
        var local = new AsyncLocal<string>();
        long perPost = -1;
        string? seen = null;
        Exception? failure = null;

        // A thread started with UnsafeStart holds the default context, as the awaits of code that sets no AsyncLocal do.
        var poster = new Thread(() =>
        {
            try
            {
                int done = 0;
                SendOrPostCallback callback = _ => Interlocked.Increment(ref done);
                PostAll(context, callback, 50_000, ref done, 0); // warm-up: the global queue's segments grow once

                // The least of three rounds. The global queue (a ConcurrentQueue) allocates a larger segment on the
                // enqueuing thread whenever it meets a slot still being dequeued: a worker preempted between claiming a
                // slot and releasing it, for as long as the poster takes to wrap around the ring. That is a one-off of
                // the BCL's queue on a loaded machine (a full run once read 1 B per post from it), not a per-post cost;
                // a post that allocates does so in every round.
                perPost = long.MaxValue;
                for (int round = 0; round < 3; round++)
                {
                    long before = GC.GetAllocatedBytesForCurrentThread();
                    PostAll(context, callback, 100_000, ref done, 50_000 + (round * 100_000));
                    perPost = Math.Min(perPost, (GC.GetAllocatedBytesForCurrentThread() - before) / 100_000);
                }

                local.Value = "carried";
                using var arrived = new ManualResetEventSlim();
                context.Post(_ => { seen = local.Value; arrived.Set(); }, null);
                arrived.Wait(SchedulerTestHelpers.Timeout).Should().BeTrue();
            }
            catch (Exception e)
            {
                failure = e;
            }
        });
        poster.UnsafeStart();
        poster.Join(SchedulerTestHelpers.Timeout).Should().BeTrue();
        failure.Should().BeNull();
        perPost.Should().Be(0, "a post in the default context travels bare in the queue's struct slot");
        seen.Should().Be("carried", "a post runs in the poster's execution context, as the base SynchronizationContext's does");

        static void PostAll(SynchronizationContext context, SendOrPostCallback callback, int count, ref int done, int doneBefore)
        {
            for (int i = 0; i < count; i++)
            {
                context.Post(callback, null);
                if ((i & 1023) == 1023)
                {
                    // Keep the queue short so it reuses its segments instead of growing.
                    int target = doneBefore + i - 64;
                    while (Volatile.Read(ref done) < target)
                    {
                        Thread.Yield();
                    }
                }
            }

            int all = doneBefore + count;
            while (Volatile.Read(ref done) < all)
            {
                Thread.Yield();
            }
        }
    }

    [Fact]
    public async Task A_yield_loop_cannot_starve_other_work_because_posts_are_fifo()
    {
        var scheduler = Create(1);
        await using var disposeScheduler = SchedulerTestHelpers.DisposeWithin(scheduler);
        using var stop = new CancellationTokenSource();
        Task loop = scheduler.Factory.StartNew(async () =>
        {
            while (!stop.IsCancellationRequested)
            {
                await Task.Yield();
            }
        }).Unwrap();

        await Task.Delay(20);
        await scheduler.Factory.StartNew(() => { }).WithTimeout();
        await scheduler.Factory.StartNew(() => Task.Factory.StartNew(() => { }, CancellationToken.None, TaskCreationOptions.None, scheduler)).Unwrap().WithTimeout();
        stop.Cancel();
        await loop.WithTimeout();
    }

    [Fact]
    public async Task A_yield_under_the_context_on_a_thread_that_is_no_worker_resumes_on_a_worker()
    {
        // The context can travel to another thread (code that captures SynchronizationContext.Current and installs it
        // elsewhere): a Task.Yield there posts to the scheduler from outside its workers, into the global queue. Kills:
        // EnqueuePosted, `worker is not null` inverted (the post off the workers threw NullReferenceException).
        var scheduler = Create(2);
        await using var disposeScheduler = SchedulerTestHelpers.DisposeWithin(scheduler);
        SynchronizationContext context = await scheduler.Factory.StartNew(() => SynchronizationContext.Current!).WithTimeout();
        var resumed = new TaskCompletionSource<bool>(TaskCreationOptions.RunContinuationsAsynchronously);
        var foreign = new Thread(() =>
        {
            SynchronizationContext.SetSynchronizationContext(context);
            _ = YieldThenReport();
        });
        foreign.Start();

        (await resumed.Task.WithTimeout()).Should().BeTrue("the yield's continuation was posted to the scheduler");

        async Task YieldThenReport()
        {
            try
            {
                await Task.Yield();
                resumed.TrySetResult(scheduler.IsWorkerThread);
            }
            catch (Exception e)
            {
                resumed.TrySetException(e);
            }
        }
    }

    [Fact]
    public void The_callbacks_that_Task_Yield_posts_are_discovered()
    {
        SendOrPostCallback?[] callbacks = YieldCallbacks.Discover();
        callbacks.Should().Contain(c => c != null, "await Task.Yield() under a context posts through one of the runtime's cached callbacks");
    }

    [Fact]
    public async Task A_yield_is_served_after_older_local_work_but_an_await_resumption_runs_next()
    {
        // The order holds while the worker makes progress. On a loaded machine a preempted worker can look stalled to
        // the watchdog, which then moves its LIFO slot (the spawned task) to the global queue, behind the yield: that
        // attempt proves nothing about the order, so it is repeated (the rescue itself has tests of its own).
        for (int attempt = 1; ; attempt++)
        {
            (List<string> order, long rescues) = await RunOnce();
            if (rescues == 0 || attempt == 5)
            {
                rescues.Should().Be(0, "five attempts in a row saw the watchdog rescue a task");
                order.Should().Equal("spawned before the yield", "after the yield", "posted", "spawned before the post");
                return;
            }
        }

        static async Task<(List<string> Order, long Rescues)> RunOnce()
        {
            // One worker, and no fairness turn in the way (they would look at the inbox first every N ticks).
            var scheduler = new WorkStealingTaskScheduler(new WorkStealingTaskSchedulerOptions { WorkerCount = 1, UseSynchronizationContext = true, FairnessInterval = 1_000_000, ThreadNamePrefix = "Ctx" });
            await using var disposeScheduler = SchedulerTestHelpers.DisposeWithin(scheduler);
            var order = new List<string>();
            await scheduler.Factory.StartNew(() =>
            {
                // A spawned task first, then a yield: the yield goes to the back of the line (FIFO).
                Task.Factory.StartNew(() => order.Add("spawned before the yield"), CancellationToken.None, TaskCreationOptions.None, scheduler);
                _ = YieldThenRecord(order);
            }).WithTimeout();

            await scheduler.Factory.StartNew(() =>
            {
                // A spawned task first, then an ordinary post (what an await resuming on this worker does): it runs next (LIFO).
                Task.Factory.StartNew(() => order.Add("spawned before the post"), CancellationToken.None, TaskCreationOptions.None, scheduler);
                SynchronizationContext.Current!.Post(static state => ((List<string>)state!).Add("posted"), order);
            }).WithTimeout();

            await scheduler.Factory.StartNew(() => { }).WithTimeout();
            await Task.Delay(50);
            return (order, scheduler.LifoRescues);
        }

        static async Task YieldThenRecord(List<string> order)
        {
            await Task.Yield();
            order.Add("after the yield");
        }
    }

    [Fact]
    public async Task Fork_join_with_await_works_in_context_mode()
    {
        var scheduler = Create(2);
        await using var disposeScheduler = SchedulerTestHelpers.DisposeWithin(scheduler);
        int result = await scheduler.Factory.StartNew(() => Fib(18)).Unwrap().WithTimeout();
        result.Should().Be(2584);

        async Task<int> Fib(int n)
        {
            if (n < 2)
            {
                return n;
            }

            Task<int> left = Task.Factory.StartNew(() => Fib(n - 1), CancellationToken.None, TaskCreationOptions.None, scheduler).Unwrap();
            int right = await Fib(n - 2);
            bool onWorker = scheduler.IsWorkerThread;
            return onWorker ? await left + right : -1_000_000;
        }
    }

    [Fact]
    public async Task An_async_void_exception_is_raised_as_unhandled_and_the_worker_lives_on()
    {
        var scheduler = Create(1);
        await using var disposeScheduler = SchedulerTestHelpers.DisposeWithin(scheduler);
        var context = await scheduler.Factory.StartNew(() => SynchronizationContext.Current!).WithTimeout();
        int ran = 0;
        context.Post(_ => Interlocked.Increment(ref ran), null);
        context.Send(_ => Interlocked.Increment(ref ran), null);
        ran.Should().Be(2);
        FluentActions.Invoking(() => context.Send(_ => throw new FormatException(), null)).Should().Throw<FormatException>();
        (await scheduler.Factory.StartNew(() => scheduler.IsWorkerThread).WithTimeout()).Should().BeTrue();
    }
}
