using System.Collections.Concurrent;
using System.Diagnostics;
using Scheduler.Timers;

namespace Scheduler.Tests.Timers;

/// <summary>
/// Every kind of change (short absolute arms, long relative arms, periodic arms, due-now arms, disarms, disposal)
/// on timers owned by several threads, checked against each timer's own history: a firing must belong to an arm
/// whose deadline had passed (never early) before the next call on that timer returned (a later call drops an older
/// schedule's expiry that has not been queued yet).
/// </summary>
[Collection(StressGroup.Name)]
public sealed class NeverEarlyStressTests
{
    private static readonly TimeSpan s_timeout = TimeSpan.FromSeconds(20);

    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(3)]
    public async Task Firings_of_randomly_changed_timers_belong_to_an_arm_that_was_due_and_not_yet_replaced(int seed)
    {
        using var wheel = new TimerWheel();
        const int Threads = 3;
        const int PerThread = 16;
        var owned = new List<TrackedTimer>[Threads];
        var last = new TrackedTimer[Threads][];
        long stormEnd = Stopwatch.GetTimestamp() + StopwatchUnits.From(TimeSpan.FromMilliseconds(300));
        Task[] storms = Enumerable.Range(0, Threads).Select(t => Task.Factory.StartNew(
            () =>
            {
                var random = new Random((seed * 17) + t);
                var timers = new List<TrackedTimer>();
                var live = new TrackedTimer[PerThread];
                for (int i = 0; i < PerThread; i++)
                {
                    live[i] = new TrackedTimer(wheel);
                    timers.Add(live[i]);
                }

                while (Stopwatch.GetTimestamp() < stormEnd)
                {
                    int index = random.Next(PerThread);
                    TrackedTimer timer = live[index];
                    switch (random.Next(8))
                    {
                        case 0:
                        case 1:
                            timer.Change(TimeSpan.FromTicks(random.Next(1_000, 50_000)), Timeout.InfiniteTimeSpan);
                            break;
                        case 2:
                        case 3:
                            // Long arms are relative (measured by the reconciler), often the same word again.
                            timer.Change(TimeSpan.FromSeconds(1) + TimeSpan.FromTicks(random.Next(3) * 10_000), Timeout.InfiniteTimeSpan);
                            break;
                        case 4:
                            timer.Change(TimeSpan.FromTicks(random.Next(0, 30_000)), TimeSpan.FromMilliseconds(random.Next(1, 4)));
                            break;
                        case 5:
                            timer.Change(Timeout.InfiniteTimeSpan, Timeout.InfiniteTimeSpan);
                            break;
                        case 6:
                            if (random.Next(8) == 0)
                            {
                                timer.Dispose();
                                live[index] = new TrackedTimer(wheel);
                                timers.Add(live[index]);
                            }

                            break;
                        default:
                            Thread.SpinWait(random.Next(1, 500));
                            break;
                    }
                }

                owned[t] = timers;
                last[t] = live;
            },
            CancellationToken.None,
            TaskCreationOptions.LongRunning,
            TaskScheduler.Default)).ToArray();
        await Task.WhenAll(storms).WaitAsync(s_timeout);

        // Let the ThreadPool run what the storm queued (a marker queued behind it runs once it has), so that a callback
        // queued before the last calls cannot run as late as their deadlines.
        for (int round = 0; round < 2; round++)
        {
            var caughtUp = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            ThreadPool.UnsafeQueueUserWorkItem(static tcs => tcs.SetResult(), caughtUp, preferLocal: false);
            await caughtUp.Task.WaitAsync(s_timeout);
        }

        // The last call on every live timer (the storm threads are done: calls on a timer stay sequential): a third
        // re-armed long (relative), a third short, a third disarmed.
        foreach (TrackedTimer[] live in last)
        {
            for (int i = 0; i < live.Length; i++)
            {
                switch (i % 3)
                {
                    case 0:
                        live[i].Change(TimeSpan.FromSeconds(1), Timeout.InfiniteTimeSpan);
                        break;
                    case 1:
                        live[i].Change(TimeSpan.FromMilliseconds(100), Timeout.InfiniteTimeSpan);
                        break;
                    default:
                        live[i].Change(Timeout.InfiniteTimeSpan, Timeout.InfiniteTimeSpan);
                        break;
                }
            }
        }

        List<TrackedTimer> all = owned.SelectMany(list => list).ToList();
        List<TrackedTimer> armedLast = all.Where(timer => timer.LastArmDue is not null).ToList();
        long lastDeadline = armedLast.Max(timer => timer.LastArmDeadline);
        // Waited for generously past the last deadline: the firings are ThreadPool callbacks, which a loaded machine can
        // hold back for seconds, and a last arm not seen by then is reported as never fired.
        while (Stopwatch.GetTimestamp() < lastDeadline + StopwatchUnits.From(TimeSpan.FromSeconds(20))
            && !armedLast.All(timer => timer.Firings.Any(firing => firing >= timer.LastArmDeadline)))
        {
            await Task.Delay(20);
        }

        await Task.Delay(100); // a second firing of a last arm would show by now
        var problems = new List<string>();
        foreach (TrackedTimer timer in all)
        {
            timer.Dispose();
            problems.AddRange(timer.Check());
        }

        problems.Should().BeEmpty($"seed {seed}, {all.Sum(timer => timer.Firings.Count)} firings of {all.Count} timers");
    }

    /// <summary>A timer and the history of the calls its one owner thread made on it.</summary>
    private sealed class TrackedTimer
    {
        private readonly ITimer _timer;
        private readonly List<Call> _calls = [];
        private bool _disposed;

        public TrackedTimer(TimerWheel wheel)
        {
            _timer = wheel.CreateTimer(static state => ((TrackedTimer)state!).Firings.Enqueue(Stopwatch.GetTimestamp()), this, Timeout.InfiniteTimeSpan, Timeout.InfiniteTimeSpan);
        }

        public ConcurrentQueue<long> Firings { get; } = new();

        /// <summary>The due time of the last call if it armed the timer one-shot, else null.</summary>
        public TimeSpan? LastArmDue => _calls.Count > 0 && _calls[^1].Due is { } due && !_calls[^1].Periodic ? due : null;

        public long LastArmDeadline => _calls[^1].Start + StopwatchUnits.From(_calls[^1].Due!.Value);

        public void Change(TimeSpan dueTime, TimeSpan period)
        {
            long start = Stopwatch.GetTimestamp();
            _timer.Change(dueTime, period).Should().BeTrue();
            bool periodic = period != Timeout.InfiniteTimeSpan && period != TimeSpan.Zero;
            _calls.Add(new Call(start, Stopwatch.GetTimestamp(), dueTime == Timeout.InfiniteTimeSpan ? null : dueTime, periodic));
        }

        public void Dispose()
        {
            if (!_disposed)
            {
                _disposed = true;
                long start = Stopwatch.GetTimestamp();
                _timer.Dispose();
                _calls.Add(new Call(start, Stopwatch.GetTimestamp(), null, false));
            }
        }

        /// <summary>Firings no arm accounts for, and a last one-shot arm that fired other than once.</summary>
        public IEnumerable<string> Check()
        {
            long[] firings = Firings.ToArray();
            foreach (long firing in firings)
            {
                bool accounted = false;
                for (int i = 0; i < _calls.Count && !accounted; i++)
                {
                    if (_calls[i].Due is not { } due)
                    {
                        continue;
                    }

                    // The earliest the arm's deadline can be; a relative arm's is later (its reconciliation).
                    long deadline = _calls[i].Start + StopwatchUnits.From(due);
                    long replacedBy = i + 1 < _calls.Count ? _calls[i + 1].End : long.MaxValue;
                    accounted = deadline <= firing && deadline <= replacedBy;
                }

                if (!accounted)
                {
                    yield return $"a firing at {Describe(firing)} that no arm accounts for; calls: {string.Join(", ", _calls.TakeLast(4).Select(Describe))}";
                }
            }

            if (LastArmDue is not null)
            {
                int onLastArm = firings.Count(firing => firing >= LastArmDeadline);
                if (onLastArm != 1)
                {
                    yield return $"the last arm ({Describe(_calls[^1])}) fired {onLastArm} times";
                }
            }
        }

        private string Describe(long timestamp) =>
            $"+{(timestamp - _calls[0].Start) * 1000.0 / Stopwatch.Frequency:F3} ms";

        private string Describe(Call call) =>
            $"[{Describe(call.Start)}..{Describe(call.End)}: {(call.Due is { } due ? $"{due.TotalMilliseconds} ms{(call.Periodic ? " periodic" : string.Empty)}" : "off")}]";

        private readonly record struct Call(long Start, long End, TimeSpan? Due, bool Periodic);
    }
}
