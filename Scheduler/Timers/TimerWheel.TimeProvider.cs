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
    /// <param name="dueTime">Delay before the first firing; <see cref="TimeSpan.Zero"/> fires at once, <see cref="Timeout.InfiniteTimeSpan"/> never (until <see cref="ITimer.Change"/>).</param>
    /// <param name="period">Interval between firings; <see cref="TimeSpan.Zero"/> or <see cref="Timeout.InfiniteTimeSpan"/> for a one-shot timer.</param>
    /// <returns>The timer; <see cref="ITimer.Change"/> reschedules it, <see cref="IDisposable.Dispose"/> cancels it.</returns>
    /// <exception cref="ArgumentNullException"><paramref name="callback"/> is null.</exception>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="dueTime"/> or <paramref name="period"/> is negative and not <see cref="Timeout.InfiniteTimeSpan"/>.</exception>
    /// <exception cref="ObjectDisposedException">The wheel has been disposed.</exception>
    public override ITimer CreateTimer(TimerCallback callback, object? state, TimeSpan dueTime, TimeSpan period)
    {
        ArgumentNullException.ThrowIfNull(callback);
        ValidateTimerArgument(dueTime, nameof(dueTime));
        ValidateTimerArgument(period, nameof(period));
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

    // Inlined into every arm (the timeout pattern's hot path); the throw stays out of line.
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static void ValidateTimerArgument(TimeSpan value, string paramName)
    {
        if (value < TimeSpan.Zero && value != Timeout.InfiniteTimeSpan)
        {
            ThrowNegativeTime(value, paramName);
        }
    }

    [DoesNotReturn]
    [StackTraceHidden]
    private static void ThrowNegativeTime(TimeSpan value, string paramName) =>
        throw new ArgumentOutOfRangeException(paramName, value, "The time must be zero or positive, or Timeout.InfiniteTimeSpan.");
}
