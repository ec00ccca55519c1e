using System.Diagnostics;
using System.Diagnostics.CodeAnalysis;
using System.Runtime.CompilerServices;

namespace Scheduler.Timers;

// TimeProvider.CreateTimer: what Task.Delay(t, wheel), new CancellationTokenSource(t, wheel),
// new PeriodicTimer(t, wheel) and any TimeProvider-based code go through.
public sealed partial class TimerWheel
{
    /// <summary>
    /// Creates a timer on this wheel. Its callback runs on the .NET ThreadPool (never on the wheel's driver
    /// thread), in the <see cref="ExecutionContext"/> captured here, first after <paramref name="dueTime"/> and
    /// then every <paramref name="period"/> measured from each firing.
    /// </summary>
    /// <param name="callback">Invoked on each firing. An exception it throws is unhandled on its ThreadPool thread, as with <see cref="System.Threading.Timer"/>; the wheel keeps running.</param>
    /// <param name="state">Passed to <paramref name="callback"/>.</param>
    /// <param name="dueTime">
    /// Delay before the first firing; <see cref="TimeSpan.Zero"/> fires at once (the callback may run before this method
    /// returns, as with <see cref="System.Threading.Timer"/>), <see cref="Timeout.InfiniteTimeSpan"/> never (until <see cref="ITimer.Change"/>).
    /// </param>
    /// <param name="period">Interval between firings; <see cref="TimeSpan.Zero"/> or <see cref="Timeout.InfiniteTimeSpan"/> for a one-shot timer.</param>
    /// <returns>The timer; <see cref="ITimer.Change"/> reschedules it, <see cref="IDisposable.Dispose"/> cancels it.</returns>
    /// <exception cref="ArgumentNullException"><paramref name="callback"/> is null.</exception>
    /// <exception cref="ArgumentOutOfRangeException">
    /// <paramref name="dueTime"/> or <paramref name="period"/> is -2 ms or less. As with <see cref="TimeProvider.System"/>, whole
    /// milliseconds truncated toward zero count: a value above -1 ms means zero, one down to -2 ms (exclusive) infinite.
    /// </exception>
    /// <exception cref="ObjectDisposedException">The wheel has been disposed.</exception>
    /// <remarks>
    /// Unlike <see cref="TimeProvider.System"/>, which refuses more than <see cref="uint.MaxValue"/> - 1 ms, any longer due time
    /// or period is accepted (<see cref="TimeSpan.MaxValue"/>, like anything past the range of a deadline, about 18 years with
    /// nanosecond Stopwatch units, never fires).
    /// </remarks>
    public override ITimer CreateTimer(TimerCallback callback, object? state, TimeSpan dueTime, TimeSpan period)
    {
        ArgumentNullException.ThrowIfNull(callback);
        dueTime = ValidateTimerArgument(dueTime, nameof(dueTime));
        period = ValidateTimerArgument(period, nameof(period));
        ObjectDisposedException.ThrowIf(_disposed, this);

        var timer = new WheelTimer(this, callback, state);
        if (dueTime != Timeout.InfiniteTimeSpan)
        {
            // Created disarmed, a timer needs nothing more (its intent word starts Disarmed). Skipping ArmNew for it
            // also keeps ArmNew's JIT profile to armed creations (see its remarks).
            timer.ArmNew(dueTime, period);
        }

        return timer;
    }

    /// <summary>
    /// Validates a due time or period as <see cref="TimeProvider.System"/> does and returns it normalized: the system
    /// timers go by whole milliseconds truncated toward zero, so a value above -1 ms counts as <see cref="TimeSpan.Zero"/>,
    /// one down to -2 ms (exclusive) as <see cref="Timeout.InfiniteTimeSpan"/>, and -2 ms or less is refused.
    /// </summary>
    /// <remarks>Inlined into every arm (the timeout pattern's hot path): the same comparisons as a plain check; the rest stays out of line.</remarks>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static TimeSpan ValidateTimerArgument(TimeSpan value, string paramName) =>
        value >= TimeSpan.Zero || value == Timeout.InfiniteTimeSpan ? value : NormalizeNegativeTime(value, paramName);

    [StackTraceHidden]
    [MethodImpl(MethodImplOptions.NoInlining)]
    private static TimeSpan NormalizeNegativeTime(TimeSpan value, string paramName) =>
        (value.Ticks / TimeSpan.TicksPerMillisecond) switch
        {
            0 => TimeSpan.Zero,
            -1 => Timeout.InfiniteTimeSpan,
            _ => throw new ArgumentOutOfRangeException(paramName, value, "The time must be more than -2 ms (whole milliseconds, truncated toward zero, of -1 or more), as for TimeProvider.System."),
        };
}
