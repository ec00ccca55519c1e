using System.Threading.Tasks.Dataflow;

namespace Scheduler.Tests.Scheduling;

public sealed class ExecutionTests
{
    [Fact]
    public async Task A_million_tasks_each_run_exactly_once_and_only_on_the_schedulers_own_threads()
    {
        const int Count = 1_000_000;
        var scheduler = SchedulerTestHelpers.Create(2);
        await using var disposeScheduler = SchedulerTestHelpers.DisposeWithin(scheduler);
        var runs = new int[Count];
        int offWorker = 0;

        // Half from an outside producer (global queue), half spawned by workers (local deques + stealing).
        Task outside = Task.Run(() =>
        {
            var tasks = new Task[Count / 2];
            for (int i = 0; i < tasks.Length; i++)
            {
                int index = i;
                tasks[i] = scheduler.Factory.StartNew(() => Record(index));
            }

            return Task.WhenAll(tasks);
        });
        Task inside = scheduler.Factory.StartNew(() =>
        {
            var tasks = new Task[Count / 2];
            for (int i = 0; i < tasks.Length; i++)
            {
                int index = Count / 2 + i;
                tasks[i] = Task.Factory.StartNew(() => Record(index), CancellationToken.None, TaskCreationOptions.None, scheduler);
            }

            return Task.WhenAll(tasks);
        }).Unwrap();

        await Task.WhenAll(outside, inside).WithTimeout(TimeSpan.FromSeconds(60));
        offWorker.Should().Be(0, "no task of the scheduler runs on a thread that is not its own");
        runs.Should().OnlyContain(r => r == 1);

        void Record(int index)
        {
            Interlocked.Increment(ref runs[index]);
            // A compensation thread is the scheduler's own too: on a loaded machine both workers can stand still long
            // enough for one to start, as designed (a run beside forced collections saw 76,911 items run there).
            if (!scheduler.IsWorkerThread && !scheduler.IsCompensationThread)
            {
                Interlocked.Increment(ref offWorker);
            }
        }
    }

    [Fact]
    public async Task Await_resumes_on_the_scheduler()
    {
        var scheduler = SchedulerTestHelpers.Create(2);
        await using var disposeScheduler = SchedulerTestHelpers.DisposeWithin(scheduler);
        var foreign = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        Task<bool[]> observations = scheduler.Factory.StartNew(async () =>
        {
            var seen = new List<bool>();
            await Task.Yield();
            seen.Add(Check());
            await Task.Delay(5);
            seen.Add(Check());
            await foreign.Task;
            seen.Add(Check());
            await Task.Run(() => Thread.Sleep(1));
            seen.Add(Check());
            return seen.ToArray();
        }).Unwrap();

        await Task.Delay(20);
        new Thread(() => foreign.SetResult()).Start();
        (await observations.WithTimeout()).Should().Equal(true, true, true, true);

        bool Check() => scheduler.IsWorkerThread && TaskScheduler.Current == scheduler;
    }

    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    public async Task A_Task_Yield_loop_does_not_starve_other_tasks(int workers)
    {
        var scheduler = SchedulerTestHelpers.Create(workers);
        await using var disposeScheduler = SchedulerTestHelpers.DisposeWithin(scheduler);
        using var stop = new CancellationTokenSource();
        long yields = 0;
        Task[] loops = Enumerable.Range(0, workers).Select(_ => scheduler.Factory.StartNew(async () =>
        {
            while (!stop.IsCancellationRequested)
            {
                Interlocked.Increment(ref yields);
                await Task.Yield();
            }
        }).Unwrap()).ToArray();

        // Queued after the loops started, from outside and from inside: both must get a turn. Polled, not a fixed 20-ms
        // pause: on a loaded machine the loops may not have started by then, and a loop that first runs after the stop
        // below never yields.
        SpinWait.SpinUntil(() => Interlocked.Read(ref yields) > 0, SchedulerTestHelpers.Timeout).Should().BeTrue("the loops start");
        Task fromOutside = scheduler.Factory.StartNew(() => { });
        Task fromInside = scheduler.Factory.StartNew(() => Task.Factory.StartNew(() => { }, CancellationToken.None, TaskCreationOptions.None, scheduler)).Unwrap();
        await Task.WhenAll(fromOutside, fromInside).WithTimeout();
        stop.Cancel();
        await Task.WhenAll(loops).WithTimeout();
        Interlocked.Read(ref yields).Should().BePositive();
    }

    [Fact]
    public async Task Local_spawn_chains_cannot_starve_the_global_queue()
    {
        // One worker runs an endless chain of locally spawned tasks (LIFO slot); an outside producer's task
        // must still run because the global queue is checked every FairnessInterval ticks.
        var scheduler = SchedulerTestHelpers.Create(1);
        await using var disposeScheduler = SchedulerTestHelpers.DisposeWithin(scheduler);
        var stop = 0;
        void Chain()
        {
            if (Volatile.Read(ref stop) == 0)
            {
                Task.Factory.StartNew(Chain, CancellationToken.None, TaskCreationOptions.None, scheduler);
            }
        }

        await scheduler.Factory.StartNew(Chain).WithTimeout();
        await scheduler.Factory.StartNew(() => Volatile.Write(ref stop, 1)).WithTimeout();
    }

    [Fact]
    public async Task Ping_pong_through_the_lifo_slot_cannot_starve_older_local_work()
    {
        var scheduler = SchedulerTestHelpers.Create(1);
        await using var disposeScheduler = SchedulerTestHelpers.DisposeWithin(scheduler);
        var stop = 0;
        var olderRan = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);

        void Ping()
        {
            if (Volatile.Read(ref stop) == 0)
            {
                Task.Factory.StartNew(Pong, CancellationToken.None, TaskCreationOptions.None, scheduler);
            }
        }

        void Pong()
        {
            if (Volatile.Read(ref stop) == 0)
            {
                Task.Factory.StartNew(Ping, CancellationToken.None, TaskCreationOptions.None, scheduler);
            }
        }

        await scheduler.Factory.StartNew(() =>
        {
            // The older task lands in the deque (displaced from the LIFO slot by Ping).
            Task.Factory.StartNew(() => { Volatile.Write(ref stop, 1); olderRan.SetResult(); }, CancellationToken.None, TaskCreationOptions.None, scheduler);
            Task.Factory.StartNew(Ping, CancellationToken.None, TaskCreationOptions.None, scheduler);
        }).WithTimeout();

        await olderRan.Task.WithTimeout();
    }

    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    public async Task Blocking_fork_join_does_not_deadlock(int workers)
    {
        var scheduler = SchedulerTestHelpers.Create(workers);
        await using var disposeScheduler = SchedulerTestHelpers.DisposeWithin(scheduler);
        int result = await scheduler.Factory.StartNew(() => Fib(25)).WithTimeout(TimeSpan.FromSeconds(60));
        result.Should().Be(75025);
        scheduler.GetStatistics().TasksInlined.Should().BePositive();

        int Fib(int n)
        {
            if (n < 2)
            {
                return n;
            }

            Task<int> left = Task.Factory.StartNew(() => Fib(n - 1), CancellationToken.None, TaskCreationOptions.None, scheduler);
            int right = Fib(n - 2);
            return left.Result + right; // blocks a worker: must inline the queued child
        }
    }

    [Fact]
    public async Task Fork_join_with_await_computes_correctly()
    {
        var scheduler = SchedulerTestHelpers.Create(2);
        await using var disposeScheduler = SchedulerTestHelpers.DisposeWithin(scheduler);
        int result = await scheduler.Factory.StartNew(() => Fib(20)).Unwrap().WithTimeout();
        result.Should().Be(6765);

        async Task<int> Fib(int n)
        {
            if (n < 2)
            {
                return n;
            }

            Task<int> left = Task.Factory.StartNew(() => Fib(n - 1), CancellationToken.None, TaskCreationOptions.None, scheduler).Unwrap();
            int right = await Fib(n - 2);
            return await left + right;
        }
    }

    [Fact]
    public async Task LongRunning_gets_a_dedicated_thread_and_never_blocks_a_worker()
    {
        var scheduler = SchedulerTestHelpers.Create(1);
        await using var disposeScheduler = SchedulerTestHelpers.DisposeWithin(scheduler);
        using var release = new ManualResetEventSlim();
        var info = new TaskCompletionSource<(bool OnWorker, string? Name)>();

        Task longRunning = scheduler.Factory.StartNew(() =>
        {
            info.SetResult((scheduler.IsWorkerThread, Thread.CurrentThread.Name));
            release.Wait(SchedulerTestHelpers.Timeout); // blocks its own thread only
            return TaskScheduler.Current == scheduler;
        }, TaskCreationOptions.LongRunning);

        (bool onWorker, string? name) = await info.Task.WithTimeout();
        onWorker.Should().BeFalse();
        name.Should().StartWith("Test").And.Contain("LongRunning");

        // The single worker is free: a normal task runs while the long-running one blocks.
        await scheduler.Factory.StartNew(() => release.Set()).WithTimeout();
        await longRunning.WithTimeout();
    }

    [Fact]
    public async Task A_LongRunning_task_waited_on_by_a_worker_still_runs_on_its_dedicated_thread()
    {
        // Task.Wait() on a worker inlines a queued task; a LongRunning one is queued to its own thread, not to a worker
        // queue, and must run there (the ThreadPool's scheduler never inlines it either).
        var scheduler = SchedulerTestHelpers.Create(2);
        await using var disposeScheduler = SchedulerTestHelpers.DisposeWithin(scheduler);
        for (int i = 0; i < 3000; i++)
        {
            (bool onWorker, string? name) = await scheduler.Factory.StartNew(() =>
            {
                Task<(bool, string?)> longRunning = scheduler.Factory.StartNew(
                    () => (scheduler.IsWorkerThread, Thread.CurrentThread.Name), TaskCreationOptions.LongRunning);
                longRunning.Wait();
                return longRunning.Result;
            }).WithTimeout();

            onWorker.Should().BeFalse("round {0}: a LongRunning task never runs on a worker", i);
            name.Should().Contain("LongRunning");
        }
    }

    [Fact]
    public async Task A_LongRunning_task_is_handed_to_its_thread_alone_and_never_also_queued_to_a_worker()
    {
        // Queued to a worker as well, a second copy would wait there (listed by GetScheduledTasks) and run on the worker
        // whenever the worker got to it before the task's own thread did (kills: QueueTask, the `return` after
        // StartLongRunning removed; the thread, already running when Start returns, nearly always wins that race, so the
        // copy is looked for instead). With one worker and no compensation, a copy would stay where it was queued.
        var scheduler = SchedulerTestHelpers.CreateWithoutCompensation(1);
        await using var disposeScheduler = SchedulerTestHelpers.DisposeWithin(scheduler);

        // From the worker, which waits for it (a Wait that refuses to inline it) and then lists its own queues.
        (bool RanOnWorker, Task Task, List<Task> Listed) fromWorker = await scheduler.Factory.StartNew(() =>
        {
            Task<bool> longRunning = scheduler.Factory.StartNew(() => scheduler.IsWorkerThread, TaskCreationOptions.LongRunning);
            longRunning.Wait();
            return (longRunning.Result, (Task)longRunning, SchedulerTestHelpers.ScheduledTasks(scheduler));
        }).WithTimeout();
        fromWorker.RanOnWorker.Should().BeFalse();
        fromWorker.Listed.Should().NotContain(fromWorker.Task, "started from a worker, it is queued only to its own thread");

        // From outside, with the worker held: a copy would wait in the global queue.
        using var hold = new ManualResetEventSlim();
        Task holder = scheduler.Factory.StartNew(() => hold.Wait(SchedulerTestHelpers.Timeout));
        Task<bool> fromOutside = scheduler.Factory.StartNew(() => scheduler.IsWorkerThread, TaskCreationOptions.LongRunning);
        (await fromOutside.WithTimeout()).Should().BeFalse();
        SchedulerTestHelpers.ScheduledTasks(scheduler).Should().NotContain(fromOutside, "started from outside, it is queued only to its own thread");
        hold.Set();
        await holder.WithTimeout();
    }

    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    public async Task WaitAll_on_a_worker_runs_tasks_held_by_the_global_queue_the_inbox_and_the_deque(int workers)
    {
        // Inlining also covers tasks another queue holds (the stale entry is skipped later): on one worker, nothing else
        // would ever run the ones queued from outside or with PreferFairness while the worker waits.
        var scheduler = SchedulerTestHelpers.Create(workers);
        await using var disposeScheduler = SchedulerTestHelpers.DisposeWithin(scheduler);
        int ran = 0;
        await scheduler.Factory.StartNew(() =>
        {
            var tasks = new List<Task>();
            for (int i = 0; i < 100; i++)
            {
                tasks.Add(Task.Factory.StartNew( // queued from a ThreadPool thread: the global queue
                    () => Task.Factory.StartNew(() => Interlocked.Increment(ref ran), CancellationToken.None, TaskCreationOptions.None, scheduler),
                    CancellationToken.None,
                    TaskCreationOptions.None,
                    TaskScheduler.Default).Result);
                tasks.Add(scheduler.Factory.StartNew(() => Interlocked.Increment(ref ran)));
                tasks.Add(scheduler.Factory.StartNew(() => Interlocked.Increment(ref ran), TaskCreationOptions.PreferFairness));
            }

            Task.WaitAll([.. tasks]);
        }).WithTimeout();
        ran.Should().Be(300);
        await SchedulerTestHelpers.WaitUntilAsync(() => scheduler.GetStatistics().QueuedTasks == 0);
        scheduler.GetStatistics().QueuedTasks.Should().Be(0, "the stale entries of inlined tasks are dropped");
    }

    [Fact]
    public async Task A_faulting_task_faults_only_itself_and_its_worker_lives_on()
    {
        var scheduler = SchedulerTestHelpers.Create(1);
        await using var disposeScheduler = SchedulerTestHelpers.DisposeWithin(scheduler);
        var boom = new InvalidOperationException("boom");
        Task faulted = scheduler.Factory.StartNew(() => throw boom);
        Task<int> next = scheduler.Factory.StartNew(() => 42);

        Func<Task> awaitFault = () => faulted.WithTimeout();
        (await awaitFault.Should().ThrowAsync<InvalidOperationException>()).Which.Should().BeSameAs(boom);
        (await next.WithTimeout()).Should().Be(42);

        Task asyncFault = scheduler.Factory.StartNew(async () => { await Task.Yield(); throw new FormatException(); }).Unwrap();
        await FluentActions.Awaiting(() => asyncFault.WithTimeout()).Should().ThrowAsync<FormatException>();
        (await scheduler.Factory.StartNew(() => scheduler.IsWorkerThread).WithTimeout()).Should().BeTrue();
    }

    [Fact]
    public void Parallel_For_runs_every_iteration_on_workers()
    {
        var scheduler = SchedulerTestHelpers.Create(2);
        using var disposeScheduler = SchedulerTestHelpers.DisposeBoundedOnExit(scheduler);
        var hits = new int[10_000];
        int offWorker = 0;
        Parallel.For(0, hits.Length, new ParallelOptions { TaskScheduler = scheduler }, i =>
        {
            hits[i]++;
            if (!scheduler.IsWorkerThread)
            {
                Interlocked.Increment(ref offWorker);
            }
        });

        hits.Should().OnlyContain(h => h == 1);
        // Parallel.For runs part of the loop on the calling thread by design; the rest runs on workers.
        offWorker.Should().BeLessThan(hits.Length);

        // Called from a worker, every iteration stays on workers.
        int offWorkerInside = scheduler.Factory.StartNew(() =>
        {
            int off = 0;
            Parallel.For(0, 1000, new ParallelOptions { TaskScheduler = scheduler }, _ =>
            {
                if (!scheduler.IsWorkerThread)
                {
                    Interlocked.Increment(ref off);
                }
            });
            return off;
        }).Result;
        offWorkerInside.Should().Be(0);
    }

    [Fact]
    public async Task Dataflow_ActionBlock_runs_on_the_scheduler()
    {
        var scheduler = SchedulerTestHelpers.Create(2);
        await using var disposeScheduler = SchedulerTestHelpers.DisposeWithin(scheduler);
        int processed = 0, offWorker = 0;
        var block = new ActionBlock<int>(async _ =>
        {
            await Task.Yield();
            if (!scheduler.IsWorkerThread)
            {
                Interlocked.Increment(ref offWorker);
            }

            Interlocked.Increment(ref processed);
        }, new ExecutionDataflowBlockOptions { TaskScheduler = scheduler, MaxDegreeOfParallelism = 2 });

        for (int i = 0; i < 5_000; i++)
        {
            block.Post(i);
        }

        block.Complete();
        await block.Completion.WithTimeout();
        processed.Should().Be(5_000);
        offWorker.Should().Be(0, "no task of the scheduler runs on a thread that is not its own");
    }

    [Fact]
    public async Task Two_schedulers_never_mix_work()
    {
        var a = SchedulerTestHelpers.Create(2);
        await using var disposeA = SchedulerTestHelpers.DisposeWithin(a);
        var b = SchedulerTestHelpers.Create(2);
        await using var disposeB = SchedulerTestHelpers.DisposeWithin(b);
        int mixed = 0;

        async Task Work(WorkStealingTaskScheduler mine, WorkStealingTaskScheduler other)
        {
            for (int i = 0; i < 50; i++)
            {
                Check(mine, other);
                await Task.Yield();
                Check(mine, other);
                await Task.Factory.StartNew(() => Check(mine, other), CancellationToken.None, TaskCreationOptions.None, mine);
                await Task.Delay(0);
            }
        }

        void Check(WorkStealingTaskScheduler mine, WorkStealingTaskScheduler other)
        {
            if (!mine.IsWorkerThread || other.IsWorkerThread || TaskScheduler.Current != mine)
            {
                Interlocked.Increment(ref mixed);
            }
        }

        var tasks = new List<Task>();
        for (int i = 0; i < 20; i++)
        {
            tasks.Add(a.Factory.StartNew(() => Work(a, b)).Unwrap());
            tasks.Add(b.Factory.StartNew(() => Work(b, a)).Unwrap());
        }

        await Task.WhenAll(tasks).WithTimeout();
        mixed.Should().Be(0);
    }

    [Fact]
    public async Task Targeted_work_runs_on_the_chosen_worker_from_any_thread()
    {
        var scheduler = SchedulerTestHelpers.Create(2);
        await using var disposeScheduler = SchedulerTestHelpers.DisposeWithin(scheduler);
        Thread[] workerThreads = await Task.WhenAll(Enumerable.Range(0, 2).Select(index =>
        {
            var tcs = new TaskCompletionSource<Thread>(TaskCreationOptions.RunContinuationsAsynchronously);
            scheduler.EnqueueToWorker(index, new SchedulerTestHelpers.RecordingWorkItem(() => tcs.SetResult(Thread.CurrentThread)));
            return tcs.Task;
        })).WithTimeout();
        workerThreads[0].Should().NotBeSameAs(workerThreads[1]);

        for (int round = 0; round < 200; round++)
        {
            int index = round % 2;

            // Wait until the chosen worker has run out of work. A worker that has just run the previous item and been
            // preempted (or moved to another CPU) before it found its queues empty still counts as busy, and an idle
            // peer may then take its inbox — by design, so that nothing waits for a stalled worker.
            SpinWait.SpinUntil(() => scheduler.IsWorkerIdle(index), SchedulerTestHelpers.Timeout).Should().BeTrue();
            var ran = new TaskCompletionSource<(Thread Thread, bool IsWorker, int Index)>(TaskCreationOptions.RunContinuationsAsynchronously);
            scheduler.EnqueueToWorker(index, new SchedulerTestHelpers.RecordingWorkItem(() =>
            {
                scheduler.TryGetCurrentWorkerIndex(out int current);
                ran.SetResult((Thread.CurrentThread, scheduler.IsWorkerThread, current));
            }));
            var result = await ran.Task.WithTimeout();
            result.IsWorker.Should().BeTrue();
            // The chosen worker was idle when its item arrived, so nobody steals from its inbox: it runs the item.
            result.Index.Should().Be(index);
            result.Thread.Should().BeSameAs(workerThreads[index]);
        }
    }

    [Fact]
    public async Task TryExecuteTaskInline_refuses_foreign_threads()
    {
        // No compensation: the only worker blocks on purpose, and a test thread held off its core for the compensation
        // delay (100 ms) before the gate opens would let a compensation thread (no worker) run the queued task, which
        // then completes within the wait below or reads IsWorkerThread false.
        var scheduler = SchedulerTestHelpers.CreateWithoutCompensation(1);
        await using var disposeScheduler = SchedulerTestHelpers.DisposeWithin(scheduler);
        using var gate = new ManualResetEventSlim();
        Task blocker = scheduler.Factory.StartNew(() => gate.Wait(SchedulerTestHelpers.Timeout));
        Task<bool> queued = scheduler.Factory.StartNew(() => scheduler.IsWorkerThread);

        // Waiting from the test thread must not run the task here.
        queued.Wait(50).Should().BeFalse();
        queued.IsCompleted.Should().BeFalse();

        gate.Set();
        (await queued.WithTimeout()).Should().BeTrue();
        await blocker.WithTimeout();
    }

    [Fact]
    public async Task GetScheduledTasks_lists_queued_tasks_without_blocking()
    {
        // No compensation: the only worker blocks on purpose, and a test thread held off its core for the compensation
        // delay (100 ms) between queueing the tasks and listing them would let a compensation thread run some of them first.
        var scheduler = SchedulerTestHelpers.CreateWithoutCompensation(1);
        await using var disposeScheduler = SchedulerTestHelpers.DisposeWithin(scheduler);
        using var gate = new ManualResetEventSlim();
        Task blocker = scheduler.Factory.StartNew(() => gate.Wait(SchedulerTestHelpers.Timeout));
        await Task.Delay(20);
        Task[] queued = Enumerable.Range(0, 5).Select(_ => scheduler.Factory.StartNew(() => { })).ToArray();

        var scheduled = SchedulerTestHelpers.ScheduledTasks(scheduler);
        scheduled.Should().Contain(queued);

        gate.Set();
        await Task.WhenAll(queued.Append(blocker)).WithTimeout();
    }

    [Fact]
    public async Task GetScheduledTasks_lists_tasks_in_a_workers_lifo_slot_deque_and_inbox()
    {
        // Tasks a worker spawns wait in its LIFO slot (the newest), its deque (the ones the slot displaced) and, for
        // PreferFairness (Task.Yield), its inbox: a debugger's view of the scheduler must show all of them. Taken on the
        // one worker itself, which holds them all while it runs. No compensation: a worker held off its core for 100 ms
        // between the spawns and the listing looks like a standstill, and a compensation thread would take the deque's
        // and the inbox's tasks before they are listed.
        var scheduler = SchedulerTestHelpers.CreateWithoutCompensation(1);
        await using var disposeScheduler = SchedulerTestHelpers.DisposeWithin(scheduler);
        (Task[] Spawned, List<Task> Listed) seen = await scheduler.Factory.StartNew(() =>
        {
            Task[] spawned =
            [
                Task.Factory.StartNew(() => { }, CancellationToken.None, TaskCreationOptions.None, scheduler), // deque
                Task.Factory.StartNew(() => { }, CancellationToken.None, TaskCreationOptions.PreferFairness, scheduler), // inbox
                Task.Factory.StartNew(() => { }, CancellationToken.None, TaskCreationOptions.None, scheduler), // LIFO slot
            ];
            return (spawned, SchedulerTestHelpers.ScheduledTasks(scheduler));
        }).WithTimeout();

        seen.Listed.Should().Contain(seen.Spawned);
        await Task.WhenAll(seen.Spawned).WithTimeout();
    }

    [Fact]
    public async Task A_task_run_inline_on_a_worker_is_not_queued_again()
    {
        // TryExecuteTaskInline must say that it ran the task: answered false, the runtime queues the task it has just run
        // (RunSynchronously, an await continuation run inline), a stale entry that a worker later skips and a debugger
        // lists (kills: TryExecuteTaskInline, its final `return true` made false). One worker and no compensation: a
        // stale entry would stay in the worker's queue while it lists them.
        var scheduler = SchedulerTestHelpers.CreateWithoutCompensation(1);
        await using var disposeScheduler = SchedulerTestHelpers.DisposeWithin(scheduler);
        (Task Inlined, bool RanOnWorker, List<Task> Listed) seen = await scheduler.Factory.StartNew(() =>
        {
            bool ranOnWorker = false;
            var task = new Task(() => ranOnWorker = scheduler.IsWorkerThread);
            task.RunSynchronously(scheduler);
            return (task, ranOnWorker, SchedulerTestHelpers.ScheduledTasks(scheduler));
        }).WithTimeout();

        seen.Inlined.IsCompletedSuccessfully.Should().BeTrue();
        seen.RanOnWorker.Should().BeTrue("RunSynchronously on a worker runs the task there");
        seen.Listed.Should().NotContain(seen.Inlined, "a task run inline is done, not queued");
    }

    [Fact]
    public async Task GetScheduledTasks_lists_tasks_that_overflowed_into_the_global_queue_as_a_batch()
    {
        // A worker whose deque fills moves the older half to the global queue as one batch entry: a debugger's view must
        // open the batch (kills: GetScheduledTasks, `batch.CopyTargetsTo(targets)` removed). Listed on the one worker
        // while it still holds everything it spawned; no compensation, which would take queued work before the listing.
        var scheduler = SchedulerTestHelpers.CreateWithoutCompensation(1, localQueueCapacity: 16);
        await using var disposeScheduler = SchedulerTestHelpers.DisposeWithin(scheduler);
        (Task[] Spawned, List<Task> Listed) seen = await scheduler.Factory.StartNew(() =>
        {
            Task[] spawned = [.. Enumerable.Range(0, 100).Select(_ => Task.Factory.StartNew(() => { }, CancellationToken.None, TaskCreationOptions.None, scheduler))];
            return (spawned, SchedulerTestHelpers.ScheduledTasks(scheduler));
        }).WithTimeout();

        seen.Listed.Should().Contain(seen.Spawned);
        seen.Listed.Should().OnlyHaveUniqueItems();
        await Task.WhenAll(seen.Spawned).WithTimeout();
    }

    [Fact]
    public async Task Work_items_and_pipe_callbacks_see_the_scheduler_as_current_so_awaits_come_back()
    {
        var scheduler = SchedulerTestHelpers.Create(2);
        await using var disposeScheduler = SchedulerTestHelpers.DisposeWithin(scheduler);
        var fromWorkItem = new TaskCompletionSource<(bool Current, bool ResumedOnWorker)>(TaskCreationOptions.RunContinuationsAsynchronously);
        scheduler.EnqueueToWorker(0, new SchedulerTestHelpers.RecordingWorkItem(async () =>
        {
            bool current = TaskScheduler.Current == scheduler;
            await Task.Delay(1); // completes on a timer thread: must come back to the scheduler
            fromWorkItem.SetResult((current, scheduler.IsWorkerThread && TaskScheduler.Current == scheduler));
        }));
        (await fromWorkItem.Task.WithTimeout()).Should().Be((true, true));

        var fromPipe = new TaskCompletionSource<bool>(TaskCreationOptions.RunContinuationsAsynchronously);
        scheduler.PipeScheduler.Schedule(_ => fromPipe.SetResult(TaskScheduler.Current == scheduler && Task.CurrentId is not null), null);
        (await fromPipe.Task.WithTimeout()).Should().BeTrue();
    }

    private sealed class DeliberateCallbackException() : DeliberateTestException("callback failure");

    [Fact]
    public async Task A_throwing_callback_is_raised_as_unhandled_and_its_worker_lives_on()
    {
        UnhandledExceptions.EnsureInstalled();
        var scheduler = SchedulerTestHelpers.Create(1);
        await using var disposeScheduler = SchedulerTestHelpers.DisposeWithin(scheduler);
        var thrown = new DeliberateCallbackException();
        scheduler.PipeScheduler.Schedule(static state => throw (Exception)state!, thrown);
        scheduler.EnqueueToWorker(0, new SchedulerTestHelpers.RecordingWorkItem(() => throw new DeliberateCallbackException()));

        SpinWait.SpinUntil(() => UnhandledExceptions.Contains(thrown), SchedulerTestHelpers.Timeout).Should().BeTrue("the exception must surface, not vanish");
        (await scheduler.Factory.StartNew(() => scheduler.IsWorkerThread).WithTimeout()).Should().BeTrue();
    }

    private sealed class DeliberateLoopFault() : DeliberateTestException("worker loop failure");

    // A failure of the worker loop itself (not of an item: those are caught and reported above) used to end inside the
    // carrier task, which captured it: the worker was gone and nobody ever heard of it.
    [Fact]
    public async Task A_failure_of_the_worker_loop_itself_is_raised_as_unhandled_not_swallowed()
    {
        UnhandledExceptions.EnsureInstalled();
        var scheduler = SchedulerTestHelpers.Create(2, spin: 0);
        await using var disposeScheduler = SchedulerTestHelpers.DisposeWithin(scheduler);
        var fault = new DeliberateLoopFault();
        int thrown = 0;
        scheduler.ParkHookForTests = () =>
        {
            if (Interlocked.Exchange(ref thrown, 1) == 0)
            {
                throw fault;
            }
        };
        await scheduler.Factory.StartNew(() => { }).WithTimeout(); // wakes a worker, which parks again after it: the hook throws once

        SpinWait.SpinUntil(() => UnhandledExceptions.Contains(fault), TimeSpan.FromSeconds(10)).Should().BeTrue("a worker that dies must say why, not vanish");
        (await scheduler.Factory.StartNew(() => scheduler.IsWorkerThread).WithTimeout()).Should().BeTrue("the surviving worker still runs work");
    }

    [Fact]
    public async Task A_worker_blocked_on_work_targeted_at_itself_is_rescued_by_a_peer()
    {
        // Sync-over-async on a worker: the owner blocks until an item queued to its own inbox has run.
        var scheduler = SchedulerTestHelpers.Create(2, spin: 0);
        await using var disposeScheduler = SchedulerTestHelpers.DisposeWithin(scheduler);
        await Task.Delay(50); // both workers park
        bool ran = await scheduler.Factory.StartNew(() =>
        {
            scheduler.TryGetCurrentWorkerIndex(out int me);
            using var done = new ManualResetEventSlim();
            var foreign = new Thread(() => scheduler.EnqueueToWorker(me, new SchedulerTestHelpers.RecordingWorkItem(done.Set)));
            foreign.Start();
            return done.Wait(SchedulerTestHelpers.Timeout);
        }).WithTimeout();
        ran.Should().BeTrue();
    }
}
