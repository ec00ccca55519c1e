using System.Collections.Concurrent;
using System.Diagnostics;
using System.Runtime.CompilerServices;
using System.Runtime.ExceptionServices;
using Scheduler.Timers;

using Scheduler.Tests;

namespace Scheduler.Tests.Timers;

/// <summary>Converts between <see cref="TimeSpan"/> and the wheel's <see cref="Stopwatch"/> timestamp units.</summary>
internal static class StopwatchUnits
{
    public static long From(TimeSpan span) => (long)(span.Ticks * (Stopwatch.Frequency / (double)TimeSpan.TicksPerSecond));
}

/// <summary>A clock the test moves by hand, so the wheel can be driven through years in microseconds.</summary>
internal sealed class ManualClock : TimerClock
{
    private long _now;

    public ManualClock(long start = 1_000_000) => _now = start;

    public long Now => Volatile.Read(ref _now);

    public override long GetTimestamp() => Volatile.Read(ref _now);

    public void Advance(TimeSpan by) => Interlocked.Add(ref _now, StopwatchUnits.From(by));

    public void AdvanceUnits(long units) => Interlocked.Add(ref _now, units);
}

/// <summary>A wheel entry that records its firing synchronously (on the thread that runs the wheel).</summary>
internal sealed class RecordingEntry : TimerEntry
{
    public int Id { get; init; }

    public int FireCount;

    public long FiredAt = -1;

    public TimerClock? Clock { get; init; }

    internal override long DeadlineTimestamp { get; set; }

    internal override long DueTick { get; set; }

    internal override long OnExpired(TimerWheel wheel, long nowTimestamp) => 7;

    internal override void Fire(long token)
    {
        token.Should().Be(7);
        FiredAt = Clock?.GetTimestamp() ?? 0;
        Interlocked.Increment(ref FireCount);
    }

    public void Schedule(TimerWheel wheel, long deadline, long now)
    {
        lock (wheel.SyncRoot)
        {
            wheel.InsertLocked(this, deadline, now);
        }
    }

    public void Cancel(TimerWheel wheel)
    {
        lock (wheel.SyncRoot)
        {
            wheel.RemoveLocked(this);
        }
    }
}

/// <summary>The exception the tests' timer callbacks throw on purpose.</summary>
internal sealed class DeliberateTimerException : DeliberateTestException
{
    public DeliberateTimerException(string message)
        : base(message)
    {
    }

    public DeliberateTimerException()
    {
    }

    public DeliberateTimerException(string message, Exception innerException)
        : base(message, innerException)
    {
    }
}

/// <summary>Runs many concurrent delays of random length on a wheel and counts those that ended before their time.</summary>
internal static class RandomDelays
{
    /// <summary>
    /// Starts <paramref name="count"/> delays of 1 µs to <paramref name="maxMicroseconds"/> µs, each awaited by its own
    /// async method started from the ThreadPool (where library code normally awaits), waits for all of them (at most
    /// 30 s), and returns how many completed before their delay had passed by <see cref="Stopwatch"/>.
    /// </summary>
    public static async Task<int> CountEarlyAsync(TimerWheel wheel, int count, int maxMicroseconds, int seed)
    {
        int early = 0;
        await Task.Run(async () =>
        {
            var random = new Random(seed);
            var tasks = new Task[count];
            for (int i = 0; i < count; i++)
            {
                tasks[i] = Wait(TimeSpan.FromMicroseconds(random.Next(1, maxMicroseconds)));
            }

            await Task.WhenAll(tasks);
        }).WaitAsync(TimeSpan.FromSeconds(30));
        return early;

        async Task Wait(TimeSpan delay)
        {
            long start = Stopwatch.GetTimestamp();
            await wheel.DelayAsync(delay);
            if (Stopwatch.GetElapsedTime(start) < delay)
            {
                Interlocked.Increment(ref early);
            }
        }
    }
}

internal static class Cpu
{
    /// <summary>
    /// CPU time consumed while <paramref name="window"/> passes by the threads whose OS name starts with
    /// <paramref name="namePrefix"/>, per thread in nanoseconds from /proc (Linux; see <see cref="ThreadCpu"/>).
    /// </summary>
    public static TimeSpan MeasureThreads(string namePrefix, TimeSpan window)
    {
        ThreadCpu.Snapshot before = ThreadCpu.Take();
        Thread.Sleep(window);
        return TimeSpan.FromMilliseconds(ThreadCpu.Sum(ThreadCpu.Since(before), name => name.StartsWith(namePrefix, StringComparison.Ordinal)));
    }

    /// <summary>
    /// CPU time consumed while <paramref name="window"/> passes by every thread of the process but the runtime's shared
    /// service threads (<see cref="ThreadCpu.IsRuntimeServiceThread"/>), with the per-thread breakdown for a failure
    /// message. Those threads serve the test host too (its parent-process polls and result flushes cost 1-2% of a core
    /// on a loaded machine): the process's total time, which counts them, breaks a 3% bound without any help from the
    /// code under test.
    /// </summary>
    public static (TimeSpan Used, string Breakdown) MeasureProcessOutsideRuntimeServices(TimeSpan window)
    {
        ThreadCpu.Snapshot before = ThreadCpu.Take();
        Thread.Sleep(window);
        IReadOnlyList<ThreadCpu.Usage> used = ThreadCpu.Since(before);
        return (TimeSpan.FromMilliseconds(ThreadCpu.Sum(used, name => !ThreadCpu.IsRuntimeServiceThread(name))), ThreadCpu.Describe(used));
    }
}

/// <summary>Tests that measure process-wide CPU or memory run alone, after the parallel ones.</summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class ResourceMeasurementGroup
{
    public const string Name = "Timers resource measurements";
}

/// <summary>
/// A manual clock that can run a hook in place of one reading (once, after <see cref="ReadsBeforeHook"/> more readings)
/// and return what the hook says: a test's way into the middle of a wheel's pass.
/// </summary>
internal sealed class HookClock : TimerClock
{
    private readonly ManualClock _inner = new();

    public Func<long>? OnNextRead { get; set; }

    public int ReadsBeforeHook { get; set; }

    public override long GetTimestamp()
    {
        Func<long>? hook = OnNextRead;
        if (hook is not null && ReadsBeforeHook-- == 0)
        {
            OnNextRead = null;
            return hook();
        }

        return _inner.GetTimestamp();
    }

    public void Advance(TimeSpan by) => _inner.Advance(by);
}

/// <summary>Reach into a <c>DelayAsync</c> <see cref="ValueTask"/>: its slab chunk, its token, and its slot's continuation.</summary>
internal static class DelayTestHooks
{
    /// <summary>Whether the slot behind <paramref name="delay"/> still holds a continuation (a consumed use must not).</summary>
    public static bool DelaySlotHoldsContinuation(ValueTask delay) =>
        ((DelayChunk)ValueTaskSource(ref delay)!).SlotHoldsContinuationForTests(ValueTaskToken(ref delay));

    /// <summary>Whether a consumer (a registration or a read) holds the slot behind <paramref name="delay"/> right now.</summary>
    public static bool DelaySlotIsHeldByAConsumer(ValueTask delay) =>
        ((DelayChunk)ValueTaskSource(ref delay)!).SlotIsHeldByAConsumerForTests(ValueTaskToken(ref delay));

    /// <summary>Registers <paramref name="continuation"/> under a context that runs it inline on the completing thread.</summary>
    public static void OnCompletedInline(ValueTask delay, Action continuation) =>
        OnCompletedUnder(new InlineSynchronizationContext(), delay, continuation);

    /// <summary>
    /// Registers <paramref name="continuation"/> with <paramref name="context"/> current: through <c>OnCompleted</c>, which
    /// flows the execution context, or, as an <c>await</c> registers, through <c>UnsafeOnCompleted</c>, which does not.
    /// </summary>
    public static void OnCompletedUnder(SynchronizationContext context, ValueTask delay, Action continuation, bool flowExecutionContext = true)
    {
        SynchronizationContext? previous = SynchronizationContext.Current;
        SynchronizationContext.SetSynchronizationContext(context);
        try
        {
            if (flowExecutionContext)
            {
                delay.GetAwaiter().OnCompleted(continuation);
            }
            else
            {
                delay.GetAwaiter().UnsafeOnCompleted(continuation);
            }
        }
        finally
        {
            SynchronizationContext.SetSynchronizationContext(previous);
        }
    }

    [UnsafeAccessor(UnsafeAccessorKind.Field, Name = "_obj")]
    public static extern ref object? ValueTaskSource(ref ValueTask task);

    [UnsafeAccessor(UnsafeAccessorKind.Field, Name = "_token")]
    public static extern ref short ValueTaskToken(ref ValueTask task);
}

/// <summary>The callbacks a wheel timer has handed to the ThreadPool and that have not finished yet.</summary>
/// <summary>
/// <see cref="TimerWheel.ReconcileBatch"/> − 1 timers due in a minute, created on a wheel with the nurseries off: each
/// creation pushed its timer onto the pending stack, so the wheel's next push is the batch's last, which drains the
/// stack on its own thread when the wheel lock is free. Disposing the set disposes the timers.
/// </summary>
internal sealed class OneShortOfAReconcileBatch : IDisposable
{
    private readonly List<ITimer> _timers = new(TimerWheel.ReconcileBatch - 1);

    public OneShortOfAReconcileBatch(TimerWheel wheel)
    {
        for (int i = 0; i < TimerWheel.ReconcileBatch - 1; i++)
        {
            _timers.Add(wheel.CreateTimer(static _ => { }, null, TimeSpan.FromMinutes(1), Timeout.InfiniteTimeSpan));
        }

        wheel.LinkedCount.Should().Be(0, "no push has drained the stack yet");
    }

    public void Dispose()
    {
        foreach (ITimer timer in _timers)
        {
            timer.Dispose();
        }
    }
}

internal static class TimerCallbacks
{
    /// <summary>
    /// Waits (bounded by <paramref name="guard"/>) until no callback of <paramref name="timers"/> is queued to the
    /// ThreadPool or running; false if one still was. A callback queued before a Change or Dispose returned may still
    /// run after it (docs/timers.md), and on a loaded machine a queued one waited far longer than the fixed settling
    /// delays that tests read a settled count after: read it once this returns, and only a callback queued afterwards
    /// (which a stopped timer must not queue) can move it.
    /// </summary>
    public static bool WaitUntilIdle(TimeSpan guard, params ITimer[] timers) =>
        SpinWait.SpinUntil(() => timers.All(timer => Volatile.Read(ref RunningCallbacks((WheelTimer)timer)) == 0), guard);

    // Running callbacks plus WheelTimer.QueuedBit: zero when none is queued and none runs.
    [UnsafeAccessor(UnsafeAccessorKind.Field, Name = "_runningCallbacks")]
    private static extern ref int RunningCallbacks(WheelTimer timer);
}
