using System.Diagnostics;

namespace Scheduler.Timers;

/// <summary>
/// A hierarchical timer wheel (6 levels × 64 slots) exposed as a <see cref="TimeProvider"/>: timers cost an
/// O(1) insert and an O(1) cancel, one driver thread sleeps until the next deadline (no CPU while nothing is
/// due), and nothing ever fires before its deadline as <see cref="Stopwatch"/> measures it.
/// </summary>
/// <remarks>
/// <para>
/// <see cref="DelayAsync"/> is the allocation-free path: a 40-byte slot of the wheel's delay slab whose continuation resumes on the
/// awaiting <see cref="WorkStealingTaskScheduler"/> worker (or the captured context, or the ThreadPool).
/// As a <see cref="TimeProvider"/> the wheel serves <c>Task.Delay(delay, wheel)</c>,
/// <c>new CancellationTokenSource(delay, wheel)</c>, <c>new PeriodicTimer(period, wheel)</c> and any code
/// written against <see cref="TimeProvider"/>; <see cref="CreateTimer"/> callbacks run on the .NET ThreadPool,
/// never on the driver thread.
/// </para>
/// <para>
/// Deadlines are rounded up to whole ticks, so a timer fires at most about one tick (plus scheduling noise)
/// after its deadline. An <see cref="ITimer"/> armed for a second or more is measured from the moment the driver
/// takes the arm in (within about 4 ms) instead of from the call, which spares the arming thread a clock read:
/// never early, up to that much later. See <c>docs/timers.md</c> for the data structure and the never-early argument.
/// </para>
/// </remarks>
public sealed partial class TimerWheel : TimeProvider, IDisposable
{
    // Ticks longer than this would make tick arithmetic overflow long before the wheel's span is reached,
    // and no one needs a coarser timer than this.
    private static readonly TimeSpan s_maxTickDuration = TimeSpan.FromHours(1);

    // Guards the wheel, every linked entry's links and deadlines, and _disposed. In production only the driver
    // takes it on its own (user threads arm and cancel through the pending-changes stack, TimerWheel.Pending.cs);
    // Dispose, the test seams and a thread waking a driver that would sleep too long take it too. A Monitor
    // (rather than System.Threading.Lock) because the driver sleeps with Monitor.Wait: a pulse taken under the
    // same lock can never be lost between "compute wait" and "wait".
    private readonly object _lock = new();
    private readonly TimerClock _clock;
    private readonly TimingWheel _wheel = new();
    private readonly long _originTimestamp;
    private readonly long _tickTimestampUnits;
    private readonly long _timestampUnitsPerTimeSpanTick;
    private readonly long _maxExactTimeSpanTicks;
    private readonly FastDivisor _tickDivisor;
    private readonly bool _usesStopwatch;
    private volatile bool _disposed;

    /// <summary>Creates a wheel with a 1 ms tick and starts its driver thread.</summary>
    public TimerWheel()
        : this(TimeSpan.FromMilliseconds(1))
    {
    }

    /// <summary>Creates a wheel whose deadlines are rounded up to multiples of <paramref name="tickDuration"/>, and starts its driver thread.</summary>
    /// <param name="tickDuration">The wheel's resolution. Smaller ticks mean less lateness and more driver wake-ups under load.</param>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="tickDuration"/> is zero, negative, or longer than one hour.</exception>
    public TimerWheel(TimeSpan tickDuration)
        : this(tickDuration, TimerClock.System, startDriver: true)
    {
    }

    /// <summary>The test seam: a clock of the caller's choosing, and optionally no driver (the caller then calls <see cref="RunDueTimers"/>).</summary>
    internal TimerWheel(TimeSpan tickDuration, TimerClock clock, bool startDriver)
    {
        ArgumentOutOfRangeException.ThrowIfLessThanOrEqual(tickDuration, TimeSpan.Zero);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(tickDuration, s_maxTickDuration);
        ArgumentNullException.ThrowIfNull(clock);

        _clock = clock;
        TickDuration = tickDuration;
        long frequency = Stopwatch.Frequency;
        _timestampUnitsPerTimeSpanTick = frequency % TimeSpan.TicksPerSecond == 0 ? frequency / TimeSpan.TicksPerSecond : 0;
        _maxExactTimeSpanTicks = _timestampUnitsPerTimeSpanTick == 0 ? 0 : long.MaxValue / _timestampUnitsPerTimeSpanTick;
        _tickTimestampUnits = Math.Max(1, ToTimestampUnits(tickDuration));
        _tickDivisor = new FastDivisor(_tickTimestampUnits);
        _usesStopwatch = clock == TimerClock.System;
        RelativeArmsEnabled = _usesStopwatch;
        _originTimestamp = clock.GetTimestamp();
        _reconcileIntervalUnits = Math.Max(1, ToTimestampUnits(s_reconcileInterval));
        _delays = new DelaySlab(this);
        _delayWheel = new DelayWheel(_delays);

        if (startDriver)
        {
            _driver = new Thread(DriverLoop)
            {
                IsBackground = true,
                Name = "TimerWheel driver",
            };
            _driver.UnsafeStart();
        }
    }

    /// <summary>The wheel's resolution: deadlines are rounded up to a multiple of it.</summary>
    public TimeSpan TickDuration { get; }

    /// <inheritdoc />
    /// <remarks>The <see cref="Stopwatch"/> frequency: timestamps of this provider and of <see cref="Stopwatch"/> are interchangeable.</remarks>
    public override long TimestampFrequency => Stopwatch.Frequency;

    /// <inheritdoc />
    /// <remarks>The <see cref="Stopwatch"/> timestamp (the clock the wheel itself runs on).</remarks>
    public override long GetTimestamp() => _usesStopwatch ? Stopwatch.GetTimestamp() : _clock.GetTimestamp();

    /// <summary>
    /// The number of timers and delays currently waiting (infinite delays included), after reconciling every change
    /// pushed so far (so a cancel that returned is already counted out). For tests and diagnostics.
    /// </summary>
    internal int PendingCount
    {
        get
        {
            lock (_lock)
            {
                if (!_disposed)
                {
                    DrainPendingLocked(_clock.GetTimestamp());
                }

                return _wheel.Count + _delayWheel.Count + _delayWheel.InfiniteCount;
            }
        }
    }

    /// <summary>
    /// The number of timers linked right now, without reconciling pending changes first: what the wheel actually
    /// holds (a cancelled timer counts until the driver has reconciled it). For tests and diagnostics.
    /// </summary>
    internal int LinkedCount
    {
        get
        {
            lock (_lock)
            {
                return _wheel.Count + _delayWheel.Count + _delayWheel.InfiniteCount;
            }
        }
    }

    internal bool IsDisposed => _disposed;

    /// <summary>The clock reading tick 0 starts at; timer intents hold deadlines relative to it.</summary>
    internal long OriginTimestamp => _originTimestamp;

    /// <summary>Serialises the writers of periodic timer intents (WheelTimer.WritePeriodic).</summary>
    internal Lock PeriodicWriterLock { get; } = new();

    /// <summary>
    /// Links <paramref name="entry"/> to fire once <paramref name="deadlineTimestamp"/> has passed. Caller holds
    /// the lock and has checked <see cref="IsDisposed"/> under it.
    /// </summary>
    internal void InsertLocked(TimerEntry entry, long deadlineTimestamp, long nowTimestamp)
    {
        Debug.Assert(Monitor.IsEntered(_lock), "Caller holds the wheel lock.");
        entry.DeadlineTimestamp = deadlineTimestamp;
        long dueTick = _wheel.PrepareInsert(DueTickOf(deadlineTimestamp), TickOf(nowTimestamp));
        _wheel.Insert(entry, dueTick);
        WakeDriverIfEarlierLocked(dueTick);
    }

    /// <summary>Unlinks <paramref name="entry"/> if it is linked. O(1). Caller holds the lock.</summary>
    internal void RemoveLocked(TimerEntry entry)
    {
        Debug.Assert(Monitor.IsEntered(_lock), "Caller holds the wheel lock.");
        if (entry.IsLinked)
        {
            _wheel.Remove(entry);
        }
    }

    internal object SyncRoot => _lock;

    [System.Diagnostics.CodeAnalysis.DoesNotReturn]
    internal static void ThrowDisposed() => throw new ObjectDisposedException(nameof(TimerWheel));
}
