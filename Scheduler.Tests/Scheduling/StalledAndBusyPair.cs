using System.Diagnostics;

namespace Scheduler.Tests.Scheduling;

/// <summary>
/// On a two-worker scheduler: one worker stalled in a long task (computing, not blocked, so only a busy peer's fairness
/// turn takes its inbox), the other kept busy by a chain of short tasks (so it never goes idle, and never steals the
/// idle way). Disposing stops both, also after a failed assertion: disposing the scheduler would otherwise wait for an
/// endless chain.
/// </summary>
internal sealed class StalledAndBusyPair : IAsyncDisposable
{
    /// <summary>How long the stalled worker computes at most (disposing the pair ends it sooner).</summary>
    public static readonly TimeSpan Stall = TimeSpan.FromSeconds(10);

    private readonly CancellationTokenSource _release = new();
    private readonly WorkStealingTaskScheduler _scheduler;
    private Task _stalled = Task.CompletedTask;
    private Task _chain = Task.CompletedTask;
    private int _stalledIndex = -1;
    private int _busyIndex = -1;
    private int _chainRuns;

    private StalledAndBusyPair(WorkStealingTaskScheduler scheduler) => _scheduler = scheduler;

    public int StalledIndex => _stalledIndex;

    public int BusyIndex => Volatile.Read(ref _busyIndex);

    /// <summary>
    /// The pair's two-worker scheduler, without compensation (<see cref="SchedulerTestHelpers.CreateWithoutCompensation"/>):
    /// the stalled worker computes by design, so a busy worker preempted for 100 ms looks like a standstill, and a
    /// compensation thread (no worker) would run chain items (the busy index read -1 once, load average 14) or take the
    /// stalled worker's inbox in place of the fairness turn under test.
    /// </summary>
    public static WorkStealingTaskScheduler CreateScheduler(int spin = 30) => SchedulerTestHelpers.CreateWithoutCompensation(2, spin);

    public static StalledAndBusyPair Start(WorkStealingTaskScheduler scheduler)
    {
        var pair = new StalledAndBusyPair(scheduler);
        using var stalledStarted = new ManualResetEventSlim();
        pair._stalled = scheduler.Factory.StartNew(() =>
        {
            scheduler.TryGetCurrentWorkerIndex(out pair._stalledIndex);
            stalledStarted.Set();
            var clock = Stopwatch.StartNew();
            while (!pair._release.IsCancellationRequested && clock.Elapsed < Stall)
            {
                Thread.SpinWait(100);
            }
        });
        stalledStarted.Wait(SchedulerTestHelpers.Timeout).Should().BeTrue();

        pair._chain = scheduler.Factory.StartNew(() => Chain(scheduler, () =>
        {
            scheduler.TryGetCurrentWorkerIndex(out int index);
            Volatile.Write(ref pair._busyIndex, index);
            Interlocked.Increment(ref pair._chainRuns);
        }, pair._release.Token));
        SpinWait.SpinUntil(() => Volatile.Read(ref pair._chainRuns) > 1_000, SchedulerTestHelpers.Timeout).Should().BeTrue("the chain runs on the other worker");
        return pair;
    }

    /// <summary>
    /// Queues <paramref name="count"/> items to the stalled worker's inbox, all from inside one item on the busy worker:
    /// no fairness turn can fall between two of these enqueues, so its next rescue takes them all at once (one rescue
    /// takes the item it runs plus up to 15 it moves to its deque). Item <c>i</c> calls <paramref name="run"/>(i).
    /// </summary>
    public void QueueToStalledFromBusy(int count, Action<int> run) =>
        _scheduler.EnqueueToWorker(BusyIndex, new SchedulerTestHelpers.RecordingWorkItem(() =>
        {
            for (int i = 0; i < count; i++)
            {
                int sequence = i;
                _scheduler.EnqueueToWorker(_stalledIndex, new SchedulerTestHelpers.RecordingWorkItem(() => run(sequence)));
            }
        }));

    public async ValueTask DisposeAsync()
    {
        _release.Cancel();
        await Task.WhenAll(_stalled, _chain).WithTimeout();
        _release.Dispose();
    }

    private static void Chain(WorkStealingTaskScheduler scheduler, Action step, CancellationToken stop)
    {
        step();
        if (!stop.IsCancellationRequested)
        {
            scheduler.Factory.StartNew(() => Chain(scheduler, step, stop), CancellationToken.None);
        }
    }
}
