using Scheduler.Native;

namespace Scheduler.Tests.Scheduling;

/// <summary>Workers keep to CPUs of their own (WorkStealingTaskScheduler.Placement.cs), without being pinned.</summary>
[Collection(SerialResourceGroup.Name)]
public sealed class CpuPlacementTests
{
    // Placement applies to schedulers with at least one worker per allowed CPU; the tests create exactly that many.
    private static int Cpus => Math.Max(2, CpuAffinity.AllowedCpus().Length);

    private static bool CanPlace => CpuAffinity.IsSupported && CpuAffinity.AllowedCpus().Length >= 2;

    [Theory]
    [InlineData(0, 5, 1)]
    [InlineData(1, 5, 2)]
    [InlineData(256, 5, 512)]
    [InlineData(512, 5, 1000)]
    [InlineData(1000, 999, 1000)]
    [InlineData(1000, 1000, 0)]
    [InlineData(8, 5_000, 0)]
    public void Backoff_doubles_from_a_millisecond_to_a_second_and_resets_after_a_quiet_second(long previous, long sinceLastMove, long expected) =>
        WorkStealingTaskScheduler.NextPlacementBackoff(previous, sinceLastMove).Should().Be(expected);

    [Fact]
    public async Task Workers_prefer_different_cpus_and_only_where_placement_is_on()
    {
        var first = SchedulerTestHelpers.Create(Cpus);
        await using var disposeFirst = SchedulerTestHelpers.DisposeWithin(first);
        var second = SchedulerTestHelpers.Create(Cpus);
        await using var disposeSecond = SchedulerTestHelpers.DisposeWithin(second);
        var fewer = SchedulerTestHelpers.Create(Cpus - 1);
        await using var disposeFewer = SchedulerTestHelpers.DisposeWithin(fewer);
        var off = new WorkStealingTaskScheduler(new WorkStealingTaskSchedulerOptions { WorkerCount = Cpus, SpreadOverCpus = false });
        await using var disposeOff = SchedulerTestHelpers.DisposeWithin(off);
        foreach (WorkStealingTaskScheduler scheduler in new[] { first, second, fewer, off })
        {
            await RunOnEveryWorker(scheduler);
        }

        off.PreferredCpus.Should().OnlyContain(cpu => cpu == -1);
        fewer.PreferredCpus.Should().OnlyContain(cpu => cpu == -1, "fewer workers than CPUs are left where the kernel puts them");
        if (!CanPlace)
        {
            first.PreferredCpus.Should().OnlyContain(cpu => cpu == -1, "placement needs Linux and at least two CPUs");
            return;
        }

        int[] allowed = CpuAffinity.AllowedCpus();
        foreach (WorkStealingTaskScheduler scheduler in new[] { first, second })
        {
            scheduler.PreferredCpus.Should().OnlyContain(cpu => allowed.Contains(cpu));
            scheduler.PreferredCpus.Should().OnlyHaveUniqueItems("two workers of one scheduler never share a preferred CPU while there are CPUs enough");
        }
    }

    [Fact]
    public void Schedulers_created_at_once_on_several_threads_each_keep_their_workers_apart()
    {
        if (!CanPlace)
        {
            return; // nothing to place: one CPU, or not Linux
        }

        // Preferred CPUs are handed out from one process-wide counter; a scheduler must reserve its block in one step,
        // or workers of schedulers starting at the same time interleave and two of one scheduler share a CPU.
        const int Threads = 6;
        for (int round = 0; round < 15; round++)
        {
            using var start = new Barrier(Threads);
            int[][] preferred = new int[Threads][];
            Parallel.For(0, Threads, new ParallelOptions { MaxDegreeOfParallelism = Threads }, i =>
            {
                start.SignalAndWait();
                var scheduler = SchedulerTestHelpers.Create(Cpus);
                using var join = SchedulerTestHelpers.DisposeBoundedOnExit(scheduler);
                preferred[i] = scheduler.PreferredCpus;
            });

            preferred.Should().OnlyContain(cpus => cpus.Distinct().Count() == cpus.Length, "each scheduler's workers prefer different CPUs");
        }
    }

    /// <summary>
    /// Every worker, whichever CPU it prefers and whichever it was moved to: with two CPUs one worker prefers CPU 0 and
    /// is moved to CPU 1, the other the reverse. Fails with CPU 0 taken for "no placement" or for "CPU unknown" (a
    /// preferred or current CPU compared with <c>&lt;= 0</c>, or a current one with <c>&gt; 0</c>; session 49's
    /// mutation run of the placement), which one worker alone, the one the first chain happened to land on, did not show.
    /// </summary>
    [Fact]
    public Task A_busy_worker_that_the_kernel_moved_away_returns_to_its_cpu() => WithPlacedSchedulerAsync(async scheduler =>
    {
        // A chain starts on the worker asked for, but the other one may steal its first step: try again until each
        // worker has been moved back once.
        var returned = new HashSet<int>();
        for (int attempt = 0; attempt < 4 * scheduler.WorkerCount && returned.Count < scheduler.WorkerCount; attempt++)
        {
            int wanted = Enumerable.Range(0, scheduler.WorkerCount).First(worker => !returned.Contains(worker));
            returned.Add(await DisplaceUntilMovedBackAsync(scheduler, wanted));
        }

        returned.Should().BeEquivalentTo(Enumerable.Range(0, scheduler.WorkerCount), "every worker was moved back to its CPU");
    });

    /// <summary>
    /// Runs a busy chain, started on worker <paramref name="onWorker"/>, that moves its thread off its preferred CPU
    /// until placement has moved it back; returns the index of the worker that ran it.
    /// </summary>
    private static async Task<int> DisplaceUntilMovedBackAsync(WorkStealingTaskScheduler scheduler, int onWorker)
    {
        int[] allowed = CpuAffinity.AllowedCpus();
        var back = new TaskCompletionSource<int>(TaskCreationOptions.RunContinuationsAsynchronously);
        using var stop = new CancellationTokenSource();
        int index = -1;
        long movesBefore = 0;
        int displacedTo = -1;

        // A busy chain that moves the thread off its preferred CPU, as the kernel does when it places a woken thread,
        // and watches for the scheduler to move it back. The kernel may bring it back first on its own (a competing
        // thread on the other CPU makes the load balancer do that): it is then displaced again, until a return is the
        // scheduler's. Found under a busy competing thread, where "back on its CPU" alone was sometimes the kernel's.
        Task chain = RunBusyChainAsync(scheduler, Step, stop.Token, onWorker);
        try
        {
            // Generous: placement backs off up to a second between moves, the kernel may undo a displacement first, and a
            // loaded machine holds the chain off its core for seconds; a scheduler that never moves it back still fails.
            int returnedTo = await back.Task.WaitAsync(SchedulerTestHelpers.Timeout);
            returnedTo.Should().Be(scheduler.PreferredCpus[index]);
            displacedTo.Should().NotBe(returnedTo);
            scheduler.CpuMovesPerWorker[index].Should().BeGreaterThan(movesBefore);
            return index;
        }
        finally
        {
            stop.Cancel();
            await chain.WithTimeout();
        }

        void Step(bool first)
        {
            scheduler.TryGetCurrentWorkerIndex(out int current);
            if (first)
            {
                index = current;
                movesBefore = scheduler.CpuMovesPerWorker[index];
            }

            int preferred = scheduler.PreferredCpus[current];
            if (current != index || CpuAffinity.CurrentCpu() != preferred)
            {
                return;
            }

            if (scheduler.CpuMovesPerWorker[index] > movesBefore)
            {
                back.TrySetResult(preferred);
            }
            else
            {
                displacedTo = allowed.First(cpu => cpu != preferred);
                CpuAffinity.MoveCallingThreadTo(displacedTo).Should().BeTrue();
            }
        }
    }

    /// <summary>
    /// A worker that the kernel keeps moving away (its CPU contended) backs off: at most one move after a pause that
    /// doubles from 1 ms up to a second, so about a dozen in the first second. Every step of a busy chain moves it off its
    /// CPU here; without the back-off (the pause not waited, or reset at every move: session 49's mutation run) it
    /// was moved back at every busy fairness turn, hundreds of times.
    /// </summary>
    [Fact]
    public Task A_worker_moved_away_again_and_again_backs_off() => WithPlacedSchedulerAsync(async scheduler =>
    {
        int displacements = 0;
        (int worker, int steps) = await RunChainOnOneWorkerAsync(scheduler, TimeSpan.FromSeconds(1), (current, _) =>
        {
            int preferred = scheduler.PreferredCpus[current];
            if (CpuAffinity.CurrentCpu() == preferred
                && CpuAffinity.MoveCallingThreadTo(CpuAffinity.AllowedCpus().First(cpu => cpu != preferred)))
            {
                displacements++;
            }
        });

        steps.Should().BeGreaterThan(1_000, "the chain kept the worker busy across many fairness turns");
        displacements.Should().BePositive("the chain moved its thread away");
        long moves = scheduler.CpuMovesPerWorker[worker];
        moves.Should().BePositive("placement moved the worker back at least once");

        // About a dozen in the second (the first two come without a pause, then 1, 2, 4 ... 512 ms), and a wide margin.
        moves.Should().BeLessThan(30, "each move back doubles the pause before the next");
    });

    /// <summary>
    /// A busy worker already on its CPU is not moved. Its thread is confined to that CPU, so that the kernel cannot move
    /// it either: any move counted is placement's own. Fails with the "already there" check removed or its <c>||</c>
    /// made <c>&amp;&amp;</c> (session 49's mutation run): every busy turn past the back-off "moved" it to the CPU it was on.
    /// </summary>
    [Fact]
    public Task A_busy_worker_on_its_own_cpu_is_left_there() => WithPlacedSchedulerAsync(async scheduler =>
    {
        (int worker, int steps) = await RunChainOnOneWorkerAsync(scheduler, TimeSpan.FromMilliseconds(300), (current, first) =>
        {
            if (first)
            {
                CpuAffinity.SetCallingThreadAffinity([scheduler.PreferredCpus[current]]).Should().BeTrue();
            }
        });

        steps.Should().BeGreaterThan(100, "the chain kept the worker busy across many fairness turns");
        scheduler.CpuMovesPerWorker[worker].Should().Be(0);
    });

    /// <summary>
    /// Placement needs at least one worker per CPU, not exactly one: with more workers than CPUs every worker still
    /// prefers one (round robin, so each CPU is someone's). Fails with the bounds compared the other way round (more than
    /// two workers, or more workers than CPUs, taken as a reason to place nobody: session 49's mutation run), which a
    /// scheduler of exactly one worker per CPU did not show.
    /// </summary>
    [Fact]
    public async Task A_scheduler_with_more_workers_than_cpus_places_every_worker()
    {
        var scheduler = SchedulerTestHelpers.Create(Cpus + 1);
        await using var disposeScheduler = SchedulerTestHelpers.DisposeWithin(scheduler);
        if (!CanPlace)
        {
            scheduler.PreferredCpus.Should().OnlyContain(cpu => cpu == -1, "placement needs Linux and at least two CPUs");
            return;
        }

        int[] allowed = CpuAffinity.AllowedCpus();
        scheduler.PreferredCpus.Should().OnlyContain(cpu => allowed.Contains(cpu));
        scheduler.PreferredCpus.Distinct().Should().HaveCount(allowed.Length, "round robin gives every CPU a worker");
    }

    /// <summary>
    /// The CPUs placement hands out are those of the creating thread, which its workers inherit: a thread confined to one
    /// CPU creates a scheduler with nothing to spread over, so nobody is placed. Fails with that bound compared the other
    /// way round, or combined with the worker count by <c>&amp;&amp;</c>, or its <c>return</c> removed (session 49's
    /// mutation run): every worker then preferred the one CPU.
    /// </summary>
    [Fact]
    public void A_scheduler_created_on_a_thread_confined_to_one_cpu_places_nobody()
    {
        if (!CanPlace)
        {
            return; // nothing to place: one CPU, or not Linux
        }

        int[]? preferred = null;
        Exception? failure = null;
        var creator = new Thread(() =>
        {
            try
            {
                CpuAffinity.SetCallingThreadAffinity([CpuAffinity.AllowedCpus()[0]]).Should().BeTrue();
                var scheduler = SchedulerTestHelpers.Create(Cpus);
                using var join = SchedulerTestHelpers.DisposeBoundedOnExit(scheduler);
                preferred = scheduler.PreferredCpus;
            }
            catch (Exception e)
            {
                failure = e;
            }
        });
        creator.Start();
        creator.Join();
        failure.Should().BeNull();
        preferred.Should().NotBeNull().And.OnlyContain(cpu => cpu == -1);
    }

    /// <summary>
    /// Placement moves a worker back to its CPU only after a busy stretch, with no idle spell since its previous busy
    /// fairness turn: a worker that runs an item now and then gains nothing from a move. Worker 0 gets 2,000 items one at
    /// a time, each queued after the previous one ran, so it idles after each; every item moves its thread off the
    /// preferred CPU. Fails with the idle spell not noted (session 45's mutation run of the worker's loop): about one item
    /// in 61 ends on a busy fairness turn, which then counted as a busy stretch and moved the worker back.
    /// </summary>
    [Fact]
    public Task A_worker_that_idles_between_items_is_not_moved_back() => WithPlacedSchedulerAsync(async scheduler =>
    {
        int preferred = scheduler.PreferredCpus[0];
        int away = CpuAffinity.AllowedCpus().First(cpu => cpu != preferred);
        long movesBefore = scheduler.CpuMovesPerWorker[0];
        int ranAway = 0;
        for (int i = 0; i < 2_000; i++)
        {
            var ran = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            scheduler.EnqueueToWorker(0, new SchedulerTestHelpers.RecordingWorkItem(() =>
            {
                if (CpuAffinity.CurrentCpu() == away || CpuAffinity.MoveCallingThreadTo(away))
                {
                    ranAway++; // already there (nothing moved it back), or moved there now
                }

                ran.SetResult();
            }));
            await ran.Task.WithTimeout();
        }

        ranAway.Should().BePositive("the items ran away from the worker's CPU");
        scheduler.CpuMovesPerWorker[0].Should().Be(movesBefore, "worker 0 went idle after every item: never a busy stretch");
    });

    [Fact]
    public Task A_narrower_affinity_set_after_construction_is_kept_not_widened() => WithPlacedSchedulerAsync(async scheduler =>
    {
        // The CPUs a worker may use can shrink after the scheduler started (taskset on the process, a container's
        // cpuset). Placement must then never move the worker outside the new set, nor restore the old one after a move.
        var violations = new List<string>();
        int index = -1;
        int restrictedTo = -1;
        using var stop = new CancellationTokenSource(TimeSpan.FromMilliseconds(300));

        // A busy chain for 300 ms (placement backs off from 1 ms); its first step restricts the worker's thread to a
        // CPU other than its preferred one.
        await RunBusyChainAsync(scheduler, Step, stop.Token).WaitAsync(TimeSpan.FromSeconds(10));

        lock (violations)
        {
            violations.Should().BeEmpty();
        }

        scheduler.CpuMovesPerWorker[index].Should().Be(0);

        void Step(bool first)
        {
            scheduler.TryGetCurrentWorkerIndex(out int current);
            if (first)
            {
                index = current;
                restrictedTo = CpuAffinity.AllowedCpus().First(cpu => cpu != scheduler.PreferredCpus[current]);
                CpuAffinity.SetCallingThreadAffinity([restrictedTo]).Should().BeTrue();
            }
            else if (current == index)
            {
                int[] affinity = CpuAffinity.AllowedCpus();
                int cpu = CpuAffinity.CurrentCpu();
                if (affinity is not [var only] || only != restrictedTo || cpu != restrictedTo)
                {
                    lock (violations)
                    {
                        violations.Add($"on CPU {cpu} with affinity [{string.Join(",", affinity)}], restricted to {restrictedTo}");
                    }
                }
            }
        }
    });

    /// <summary>
    /// A chain of short tasks, each spawning the next from its worker, keeps one worker busy (placement acts at a busy
    /// worker's fairness turns) until <paramref name="stop"/> is cancelled; each step first runs <paramref name="step"/>
    /// (with true for the first). Starts on worker <paramref name="onWorker"/> when one is given (its first step may still
    /// be stolen). Completes when the chain ends, or faults with the exception a step threw.
    /// </summary>
    private static Task RunBusyChainAsync(WorkStealingTaskScheduler scheduler, Action<bool> step, CancellationToken stop, int onWorker = -1)
    {
        var ended = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        if (onWorker < 0)
        {
            scheduler.Factory.StartNew(() => Next(first: true), CancellationToken.None);
        }
        else
        {
            // Spawned from that worker, the first step goes to its own queue.
            scheduler.EnqueueToWorker(onWorker, new SchedulerTestHelpers.RecordingWorkItem(
                () => scheduler.Factory.StartNew(() => Next(first: true), CancellationToken.None)));
        }

        return ended.Task;

        void Next(bool first)
        {
            try
            {
                step(first);
            }
            catch (Exception e)
            {
                ended.TrySetException(e);
                return;
            }

            Thread.SpinWait(200);
            if (stop.IsCancellationRequested)
            {
                ended.TrySetResult();
            }
            else
            {
                scheduler.Factory.StartNew(() => Next(first: false), CancellationToken.None);
            }
        }
    }

    /// <summary>
    /// Runs a busy chain for <paramref name="duration"/>, calling <paramref name="step"/> (with the worker's index, and
    /// true for the first) only for the steps that run on the worker that ran the first; returns that worker and how many
    /// steps it ran.
    /// </summary>
    private static async Task<(int Worker, int Steps)> RunChainOnOneWorkerAsync(
        WorkStealingTaskScheduler scheduler, TimeSpan duration, Action<int, bool> step)
    {
        int worker = -1;
        int steps = 0;
        using var stop = new CancellationTokenSource(duration);
        await RunBusyChainAsync(scheduler, OnStep, stop.Token).WaitAsync(SchedulerTestHelpers.Timeout);
        return (worker, steps);

        void OnStep(bool first)
        {
            scheduler.TryGetCurrentWorkerIndex(out int current);
            if (first)
            {
                worker = current;
            }

            if (current == worker)
            {
                steps++;
                step(current, first);
            }
        }
    }

    /// <summary>
    /// Runs <paramref name="test"/> on a started scheduler with one worker per allowed CPU (see
    /// <see cref="StartPlacedSchedulerAsync"/>) and disposes it after; does nothing where there is nothing to place (one
    /// CPU, or not Linux).
    /// </summary>
    private static async Task WithPlacedSchedulerAsync(Func<WorkStealingTaskScheduler, Task> test)
    {
        WorkStealingTaskScheduler? scheduler = await StartPlacedSchedulerAsync();
        if (scheduler is null)
        {
            return; // nothing to place: one CPU, or not Linux
        }

        await using var disposeScheduler = SchedulerTestHelpers.DisposeWithin(scheduler);
        await test(scheduler);
    }

    /// <summary>
    /// A scheduler with one worker per allowed CPU (so placement applies), every worker started and running; null where
    /// there is nothing to place (one CPU, or not Linux).
    /// </summary>
    private static async Task<WorkStealingTaskScheduler?> StartPlacedSchedulerAsync()
    {
        if (!CanPlace)
        {
            return null;
        }

        WorkStealingTaskScheduler scheduler = SchedulerTestHelpers.Create(Cpus);
        try
        {
            await RunOnEveryWorker(scheduler);
            return scheduler;
        }
        catch (Exception failure)
        {
            // A worker that never ran may never exit either: the join is bounded, and the first failure is kept.
            try
            {
                SchedulerTestHelpers.DisposeBounded(scheduler);
            }
            catch (TimeoutException join)
            {
                throw new AggregateException(failure, join);
            }

            throw;
        }
    }

    private static Task RunOnEveryWorker(WorkStealingTaskScheduler scheduler) =>
        Task.WhenAll(Enumerable.Range(0, scheduler.WorkerCount).Select(i =>
        {
            var ran = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            scheduler.EnqueueToWorker(i, new SchedulerTestHelpers.RecordingWorkItem(() => ran.SetResult()));
            return ran.Task;
        })).WithTimeout();
}
