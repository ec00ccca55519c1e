namespace Scheduler.Tests.Scheduling;

public sealed class ConstructionTests
{
    [Fact]
    public void Default_constructor_uses_one_worker_per_core()
    {
        var scheduler = new WorkStealingTaskScheduler();
        using var disposeScheduler = SchedulerTestHelpers.DisposeBoundedOnExit(scheduler);
        scheduler.WorkerCount.Should().Be(Environment.ProcessorCount);
        scheduler.MaximumConcurrencyLevel.Should().Be(scheduler.WorkerCount);
    }

    [Theory]
    [InlineData(1)]
    [InlineData(3)]
    public void Worker_count_constructor_sets_the_concurrency_level(int workers)
    {
        var scheduler = new WorkStealingTaskScheduler(workers);
        using var disposeScheduler = SchedulerTestHelpers.DisposeBoundedOnExit(scheduler);
        scheduler.WorkerCount.Should().Be(workers);
        scheduler.MaximumConcurrencyLevel.Should().Be(workers);
    }

    [Theory]
    [InlineData(0)]
    [InlineData(-1)]
    [InlineData(WorkStealingTaskSchedulerOptions.MaxWorkerCount + 1)]
    public void Worker_count_out_of_range_throws(int workers)
    {
        FluentActions.Invoking(() => new WorkStealingTaskScheduler(workers))
            .Should().Throw<ArgumentOutOfRangeException>().WithParameterName("workerCount");
        FluentActions.Invoking(() => new WorkStealingTaskScheduler(new WorkStealingTaskSchedulerOptions { WorkerCount = workers }))
            .Should().Throw<ArgumentOutOfRangeException>().WithParameterName("WorkerCount");
    }

    [Fact]
    public void Null_options_throw()
    {
        FluentActions.Invoking(() => new WorkStealingTaskScheduler(null!)).Should().Throw<ArgumentNullException>().WithParameterName("options");
    }

    [Fact]
    public void A_null_thread_name_prefix_throws_ArgumentNullException_naming_it()
    {
        // The property is declared non-null, but nothing stops a caller from assigning null: the constructor (where
        // options are validated) must say which option, not fail later in a thread name.
        var options = new WorkStealingTaskSchedulerOptions { WorkerCount = 1, ThreadNamePrefix = null! };
        FluentActions.Invoking(() => new WorkStealingTaskScheduler(options))
            .Should().Throw<ArgumentNullException>().WithParameterName("ThreadNamePrefix");
    }

    // docs/scheduling.md's knob table: the ends of each range are accepted (0 spins parks at once, a LIFO limit of 0
    // disables the slot, a ring of 16 or 1,048,576 slots), one step beyond is refused with the option's name.
    [Theory]
    [InlineData("SpinIterations", 0, true)]
    [InlineData("LifoSlotLimit", 0, true)]
    [InlineData("FairnessInterval", 1, true)]
    [InlineData("FairnessInterval", -1, false)]
    [InlineData("LocalQueueCapacity", 16, true)]
    [InlineData("LocalQueueCapacity", 1 << 20, true)]
    [InlineData("LocalQueueCapacity", 8, false)]
    [InlineData("LocalQueueCapacity", 1 << 21, false)]
    [InlineData("LocalQueueCapacity", 0, false)]
    public void Options_at_the_edges_of_their_ranges(string option, int value, bool accepted)
    {
        var options = new WorkStealingTaskSchedulerOptions { WorkerCount = 1, ThreadNamePrefix = "Edge" };
        typeof(WorkStealingTaskSchedulerOptions).GetProperty(option)!.SetValue(options, value);

        // The capacity's refusal says what is allowed (the parameter name alone is in every such message).
        AcceptsOrRefuses(options, accepted, option, option == "LocalQueueCapacity" ? "a power of two from 16 to 1,048,576" : option);
    }

    /// <summary>An accepted option makes a scheduler that runs a task; a refused one throws naming the option.</summary>
    private static void AcceptsOrRefuses(WorkStealingTaskSchedulerOptions options, bool accepted, string option, string messagePart)
    {
        Func<WorkStealingTaskScheduler> create = () => new WorkStealingTaskScheduler(options);
        if (accepted)
        {
            var scheduler = create();
            using var disposeScheduler = SchedulerTestHelpers.DisposeBoundedOnExit(scheduler);
            scheduler.Factory.StartNew(() => 1).Wait(SchedulerTestHelpers.Timeout).Should().BeTrue();
        }
        else
        {
            create.Should().Throw<ArgumentOutOfRangeException>().WithParameterName(option)
                .Which.Message.Should().Contain(messagePart);
        }
    }

    [Theory]
    [InlineData(1.0, true)]
    [InlineData(-1.0, true)] // Timeout.InfiniteTimeSpan: compensation off
    [InlineData(int.MaxValue, true)]
    [InlineData(0.0, false)]
    [InlineData(-2.0, false)]
    [InlineData(int.MaxValue + 1.0, false)]
    public void The_blocking_compensation_delay_is_positive_or_infinite(double milliseconds, bool accepted)
    {
        var options = new WorkStealingTaskSchedulerOptions
        {
            WorkerCount = 1,
            ThreadNamePrefix = "Edge",
            BlockingCompensationDelay = TimeSpan.FromMilliseconds(milliseconds),
        };
        AcceptsOrRefuses(options, accepted, nameof(WorkStealingTaskSchedulerOptions.BlockingCompensationDelay), "Timeout.InfiniteTimeSpan");
    }

    [Fact]
    public async Task Workers_are_foreground_threads_when_background_threads_are_off()
    {
        var options = new WorkStealingTaskSchedulerOptions { WorkerCount = 1, UseBackgroundThreads = false, ThreadNamePrefix = "Foreground" };
        var scheduler = new WorkStealingTaskScheduler(options);
        try
        {
            (await scheduler.Factory.StartNew(() => Thread.CurrentThread.IsBackground).WithTimeout()).Should().BeFalse();
        }
        finally
        {
            // A foreground worker left behind would keep the test host alive.
            SchedulerTestHelpers.DisposeBounded(scheduler);
        }

        scheduler.WorkerThreads.Should().OnlyContain(t => t != null && !t.IsAlive);
    }

    [Theory]
    [InlineData("FairnessInterval")]
    [InlineData("LocalQueueCapacity")]
    [InlineData("LocalQueueCapacity, huge")]
    [InlineData("SpinIterations")]
    [InlineData("LifoSlotLimit")]
    public void Invalid_options_name_the_offending_option(string option)
    {
        var options = new WorkStealingTaskSchedulerOptions { WorkerCount = 1 };
        switch (option)
        {
            case "FairnessInterval": options.FairnessInterval = 0; break;
            case "LocalQueueCapacity": options.LocalQueueCapacity = 100; break;
            case "LocalQueueCapacity, huge": options.LocalQueueCapacity = 1 << 30; break; // was an OutOfMemoryException
            case "SpinIterations": options.SpinIterations = -1; break;
            case "LifoSlotLimit": options.LifoSlotLimit = -1; break;
        }

        FluentActions.Invoking(() => new WorkStealingTaskScheduler(options))
            .Should().Throw<ArgumentOutOfRangeException>().WithParameterName(option.Split(',')[0]);
    }

    [Fact]
    public void The_worker_count_range_ends_at_MaxWorkerCount_and_its_refusal_names_the_range()
    {
        // The upper end is accepted, by both ways of giving a count (kills: CreateOptions, `> MaxWorkerCount` made `>=`).
        // Checked on the options alone: a scheduler would start 4,096 threads.
        const int Max = WorkStealingTaskSchedulerOptions.MaxWorkerCount;
        WorkStealingTaskScheduler.CreateOptions(Max).WorkerCount.Should().Be(Max);
        FluentActions.Invoking(() => new WorkStealingTaskSchedulerOptions { WorkerCount = Max }.Validate()).Should().NotThrow();

        // Just past either end, the message says what is allowed (kills: CreateOptions, its message emptied).
        foreach (int refused in new[] { 0, Max + 1 })
        {
            FluentActions.Invoking(() => new WorkStealingTaskScheduler(refused))
                .Should().Throw<ArgumentOutOfRangeException>().WithParameterName("workerCount")
                .Which.Message.Should().StartWith($"The worker count must be between 1 and {Max}.");
            FluentActions.Invoking(() => new WorkStealingTaskScheduler(new WorkStealingTaskSchedulerOptions { WorkerCount = refused }))
                .Should().Throw<ArgumentOutOfRangeException>().WithParameterName("WorkerCount")
                .Which.Message.Should().StartWith($"The worker count must be between 1 and {Max}.");
        }
    }

    [Fact]
    public async Task Options_are_copied_and_threads_named_with_the_prefix()
    {
        var options = new WorkStealingTaskSchedulerOptions { WorkerCount = 1, ThreadNamePrefix = "Prefixed" };
        var scheduler = new WorkStealingTaskScheduler(options);
        await using var disposeScheduler = SchedulerTestHelpers.DisposeWithin(scheduler);
        options.WorkerCount = 5;
        options.ThreadNamePrefix = "Changed";
        scheduler.WorkerCount.Should().Be(1);

        // The prefix is read again for every LongRunning thread: from the scheduler's copy, not the caller's object. A
        // LongRunning thread is a background thread, as the workers are: a task still running when the program returns
        // from Main does not keep the process (kills: WorkStealingTaskScheduler.cs StartLongRunning, IsBackground made false).
        (string? longRunningName, bool longRunningBackground) = await scheduler.Factory.StartNew(
            () => (Thread.CurrentThread.Name, Thread.CurrentThread.IsBackground), TaskCreationOptions.LongRunning).WithTimeout();
        longRunningName.Should().StartWith("Prefixed");
        longRunningBackground.Should().BeTrue();

        string? name = await scheduler.Factory.StartNew(() => Thread.CurrentThread.Name).WithTimeout();
        name.Should().StartWith("Prefixed");
        bool background = await scheduler.Factory.StartNew(() => Thread.CurrentThread.IsBackground).WithTimeout();
        background.Should().BeTrue();
    }

    [Fact]
    public async Task Shared_is_a_single_lazily_created_scheduler_that_cannot_be_disposed()
    {
        WorkStealingTaskScheduler shared = WorkStealingTaskScheduler.Shared;
        shared.Should().BeSameAs(WorkStealingTaskScheduler.Shared);
        shared.WorkerCount.Should().Be(Environment.ProcessorCount);
        (await shared.Factory.StartNew(() => shared.IsWorkerThread).WithTimeout()).Should().BeTrue();
        bool background = await shared.Factory.StartNew(() => Thread.CurrentThread.IsBackground).WithTimeout();
        background.Should().BeTrue();

        // Its threads are told apart from a user's default-named scheduler in a debugger or a dump (kills:
        // WorkStealingTaskScheduler.cs s_shared, the ThreadNamePrefix initializer removed or emptied).
        shared.WorkerThreads.Should().OnlyContain(t => t != null && t.Name != null && t.Name.StartsWith("WorkStealing.Shared ", StringComparison.Ordinal));

        FluentActions.Invoking(shared.Dispose).Should().Throw<InvalidOperationException>().WithMessage("*Shared is process-wide and cannot be disposed*");
        FluentActions.Invoking(() => shared.DisposeAsync()).Should().Throw<InvalidOperationException>();
        (await shared.Factory.StartNew(() => 1).WithTimeout()).Should().Be(1);
    }

    [Fact]
    public void IsWorkerThread_is_false_on_foreign_threads()
    {
        var scheduler = new WorkStealingTaskScheduler(1);
        using var disposeScheduler = SchedulerTestHelpers.DisposeBoundedOnExit(scheduler);
        scheduler.IsWorkerThread.Should().BeFalse();
    }
    [Theory]
    [InlineData(0)]
    [InlineData(1)]
    [InlineData(2)]
    public void A_construction_that_fails_after_some_workers_started_leaves_no_thread_behind(int failingWorker)
    {
        // Starting a thread can fail (OutOfMemoryException when the OS refuses one: a pids limit, exhausted memory). The
        // workers already started used to stay parked forever with no way to dispose them (the caller never got the
        // scheduler): leaked threads, a foreground one keeping the process alive.
        WorkStealingTaskScheduler? halfBuilt = null;
        var options = new WorkStealingTaskSchedulerOptions
        {
            WorkerCount = 3,
            ThreadNamePrefix = "HalfBuilt",
            BeforeWorkerStartForTests = (scheduler, index) =>
            {
                halfBuilt = scheduler;
                if (index == failingWorker)
                {
                    throw new InjectedStartFailure();
                }
            },
        };

        ((Action)(() => _ = new WorkStealingTaskScheduler(options))).Should().Throw<InjectedStartFailure>();

        halfBuilt.Should().NotBeNull();
        Thread?[] threads = halfBuilt!.WorkerThreads;
        for (int i = 0; i < failingWorker; i++)
        {
            threads[i].Should().NotBeNull();

            // Gone before the constructor threw, not merely on their way out: the constructor waits for them. Kills:
            // AbandonConstruction, its Join removed (or its loop's `<` made `>`).
            threads[i]!.IsAlive.Should().BeFalse("worker {0} started before the failure and the constructor waits for its exit", i);
        }

        halfBuilt.IsTerminated.Should().BeTrue("every worker is gone");
    }

    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    public void A_construction_that_fails_after_its_started_workers_parked_wakes_them_to_exit(int failingWorker)
    {
        // The start of the next worker fails only once the ones started before it have gone to sleep: then only a wake-up
        // makes them see the shutdown. Without one, the constructor waited for them for good (kills: AbandonConstruction,
        // `_idle.WakeAll()` removed). In the test above the failure comes while they still start up, before they park.
        WorkStealingTaskScheduler? halfBuilt = null;
        var options = new WorkStealingTaskSchedulerOptions
        {
            WorkerCount = 3,
            ThreadNamePrefix = "HalfBuiltParked",
            BeforeWorkerStartForTests = (scheduler, index) =>
            {
                halfBuilt = scheduler;
                if (index == failingWorker)
                {
                    SpinWait.SpinUntil(() => Enumerable.Range(0, index).All(scheduler.IsWorkerParked), SchedulerTestHelpers.Timeout)
                        .Should().BeTrue("the workers started so far park with nothing to do");
                    throw new InjectedStartFailure();
                }
            },
        };

        // On a thread of its own: under the bug the constructor never returns.
        Task<Exception?> construction = Task.Factory.StartNew(
            () =>
            {
                try
                {
                    _ = new WorkStealingTaskScheduler(options);
                    return null;
                }
                catch (Exception e)
                {
                    return e;
                }
            },
            CancellationToken.None,
            TaskCreationOptions.LongRunning,
            TaskScheduler.Default);

        construction.Wait(SchedulerTestHelpers.Timeout).Should().BeTrue("the parked workers are woken to exit, and the constructor returns");
        construction.Result.Should().BeOfType<InjectedStartFailure>();
        halfBuilt!.WorkerThreads.Take(failingWorker).Should().OnlyContain(t => t != null && !t.IsAlive);
        halfBuilt.IsTerminated.Should().BeTrue("every worker is gone");
    }

    private sealed class InjectedStartFailure : Exception
    {
        public InjectedStartFailure()
            : base("Thread failed to start (injected in place of the runtime's OutOfMemoryException).")
        {
        }
    }
}
