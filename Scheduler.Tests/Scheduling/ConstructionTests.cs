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
        AcceptsOrRefuses(options, accepted, option, option);
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
    public async Task Options_are_copied_and_threads_named_with_the_prefix()
    {
        var options = new WorkStealingTaskSchedulerOptions { WorkerCount = 1, ThreadNamePrefix = "Prefixed" };
        var scheduler = new WorkStealingTaskScheduler(options);
        await using var disposeScheduler = SchedulerTestHelpers.DisposeWithin(scheduler);
        options.WorkerCount = 5;
        options.ThreadNamePrefix = "Changed";
        scheduler.WorkerCount.Should().Be(1);

        // The prefix is read again for every LongRunning thread: from the scheduler's copy, not the caller's object.
        string? longRunningName = await scheduler.Factory.StartNew(() => Thread.CurrentThread.Name, TaskCreationOptions.LongRunning).WithTimeout();
        longRunningName.Should().StartWith("Prefixed");

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
            // Generous: a worker that never exits fails it all the same, and one held off its core on a loaded machine
            // can take seconds to get there.
            threads[i]!.Join(SchedulerTestHelpers.Timeout).Should().BeTrue("worker {0} started before the failure and must exit", i);
        }

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
