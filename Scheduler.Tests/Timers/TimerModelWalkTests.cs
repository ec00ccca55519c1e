using Scheduler.Timers;

namespace Scheduler.Tests.Timers;

/// <summary>
/// Random walks through the public <see cref="ITimer"/> API on a manual clock, checked against a model of when each
/// timer must fire: arms (short, long, relative, periodic, past the span), disarms, disposals, and clock moves to the
/// next wake-up, by random amounts (late passes, years at once) or by a unit; passes with and without reconciling the
/// pushed changes first. After every pass each timer has fired exactly as often as the model says: never early, never
/// on a schedule a pending change replaced, and never later than the first pass that starts at or after its due tick.
/// Several tick lengths, relative arms on and off.
/// </summary>
public sealed class TimerModelWalkTests
{
    private const int TimerCount = 12;
    private const int Steps = 3000;

    [Theory]
    [InlineData(10_000L, false, 1)] // 1 ms
    [InlineData(10_000L, true, 2)]
    [InlineData(70_000L, false, 3)] // 7 ms
    [InlineData(70_000L, true, 4)]
    [InlineData(1L, false, 5)] // 100 ns: the span is under two hours
    [InlineData(1L, true, 6)]
    [InlineData(36_000_000_000L, true, 7)] // 1 h
    [InlineData(333L, true, 8)]
    public void Random_walks_fire_every_timer_exactly_when_the_model_says(long tickInTimeSpanTicks, bool relativeArms, int seedBase)
    {
        for (int seed = seedBase * 1000; seed < (seedBase * 1000) + 16; seed++)
        {
            Walk(TimeSpan.FromTicks(tickInTimeSpanTicks), relativeArms, seed);
        }
    }

    private static void Walk(TimeSpan tick, bool relativeArms, int seed)
    {
        TimerWheel.UnbindThreadNursery(); // this thread's nursery must belong to this walk's wheel
        var random = new Random(seed);
        var clock = new ManualClock();
        using var wheel = new TimerWheel(tick, clock, startDriver: false) { RelativeArmsEnabled = relativeArms };
        var models = new Model[TimerCount];
        var fired = new int[TimerCount];
        var timers = new ITimer[TimerCount];
        for (int i = 0; i < TimerCount; i++)
        {
            int index = i;
            models[i] = new Model();
            timers[i] = wheel.CreateTimer(_ => Interlocked.Increment(ref fired[index]), null, Timeout.InfiniteTimeSpan, Timeout.InfiniteTimeSpan);
        }

        TimeSpan RandomSpan() => random.Next(8) switch
        {
            0 => TimeSpan.FromTicks(random.Next(1, 20_000)),
            1 => TimeSpan.FromMilliseconds(random.Next(1, 200)),
            2 => TimeSpan.FromSeconds(random.Next(1, 100)),
            3 => TimeSpan.FromMinutes(random.Next(1, 600)),
            4 => TimeSpan.FromDays(random.Next(1, 1000)),
            5 => TimeSpan.FromTicks(tick.Ticks * random.Next(1, 70)),
            6 => TimeSpan.FromTicks(tick.Ticks * 64 * random.Next(1, 70)),
            _ => TimeSpan.FromMilliseconds(random.Next(900, 1100)), // around the relative-arm threshold
        };

        for (int step = 0; step < Steps; step++)
        {
            int op = random.Next(10);
            int i = random.Next(TimerCount);
            Model model = models[i];
            if (op < 4)
            {
                TimeSpan due = random.Next(20) == 0 ? Timeout.InfiniteTimeSpan : RandomSpan();
                TimeSpan period = random.Next(3) == 0 ? RandomSpan() : Timeout.InfiniteTimeSpan;
                timers[i].Change(due, period).Should().Be(!model.Disposed);
                model.Arm(wheel, clock.Now, due, period, relativeArms);
                model.Pending = true;
            }
            else if (op == 4)
            {
                timers[i].Dispose();
                model.Disposed = true;
            }
            else
            {
                int move = random.Next(4);

                // A third of the passes fire what the wheel holds without reconciling first, as the driver does when it
                // wakes for an expiry before any pushed change asked for a drain: only while no pushed change needs one
                // (an absolute arm asks for its deadline, a relative one for the reconcile interval).
                bool reconcile = random.Next(3) != 0;
                if (move == 0)
                {
                    // The look ahead reconciles the pending changes: relative arms are measured from now.
                    MeasureRelativeArms(models, clock.Now);
                    ForgetPending(models);
                    if (wheel.TryGetNextWakeTimestamp(out long next) && next > clock.Now)
                    {
                        clock.AdvanceUnits(next - clock.Now);
                    }
                }
                else if (move == 1)
                {
                    clock.AdvanceUnits(StopwatchUnits.From(RandomSpan()));
                }
                else if (move == 2)
                {
                    clock.AdvanceUnits(random.Next(0, 3));
                }

                long now = clock.Now;
                reconcile |= models.Any(m => m.Pending && m.NeedsDrainBy(now));
                if (reconcile)
                {
                    MeasureRelativeArms(models, now);
                    ForgetPending(models);
                }

                foreach (Model m in models)
                {
                    if (!m.Pending)
                    {
                        // A change still pending replaced the linked schedule: its expiry is dropped.
                        m.ExpireIfDue(wheel, now);
                    }
                }

                wheel.RunDueTimers(reconcile);
                SpinWait.SpinUntil(() => Enumerable.Range(0, TimerCount).All(k => Volatile.Read(ref fired[k]) >= models[k].Fired), TimeSpan.FromSeconds(10));
                for (int k = 0; k < TimerCount; k++)
                {
                    Volatile.Read(ref fired[k]).Should().Be(models[k].Fired, $"timer {k} after the pass of step {step} (seed {seed}, tick {tick})");
                }
            }
        }

        foreach (ITimer timer in timers)
        {
            timer.Dispose();
        }
    }

    private static void ForgetPending(Model[] models)
    {
        foreach (Model m in models)
        {
            m.Pending = false;
        }
    }

    private static void MeasureRelativeArms(Model[] models, long now)
    {
        foreach (Model m in models)
        {
            m.MeasureRelative(now);
        }
    }

    /// <summary>What a timer must do: its deadline (or pending relative delay), period, and how often it has fired.</summary>
    private sealed class Model
    {
        // The intent's 59-bit value: a deadline this far past the origin means never.
        private const long NeverSinceOrigin = (1L << 59) - 1;

        private long _deadline = -1;
        private long _relativeDelay = -1;
        private long _period;

        public bool Disposed { get; set; }

        /// <summary>Changed since the last reconciling pass.</summary>
        public bool Pending { get; set; }

        public int Fired { get; private set; }

        public void Arm(TimerWheel wheel, long now, TimeSpan due, TimeSpan period, bool relativeArms)
        {
            if (Disposed)
            {
                return;
            }

            _period = period == Timeout.InfiniteTimeSpan ? 0 : Math.Max(1, wheel.ToTimestampUnits(period));
            _deadline = -1;
            _relativeDelay = -1;
            if (due == Timeout.InfiniteTimeSpan)
            {
                return;
            }

            if (relativeArms && due >= TimeSpan.FromSeconds(1))
            {
                _relativeDelay = wheel.ToTimestampUnits(due);
            }
            else
            {
                _deadline = wheel.DeadlineAfter(now, due);
            }
        }

        /// <summary>Whether the driver would have drained by <paramref name="now"/> for this pending change.</summary>
        public bool NeedsDrainBy(long now) => !Disposed && (_relativeDelay >= 0 || (_deadline >= 0 && _deadline <= now));

        public void MeasureRelative(long now)
        {
            if (!Disposed && _relativeDelay >= 0)
            {
                _deadline = TimerWheel.SaturatingAdd(now, _relativeDelay);
                _relativeDelay = -1;
            }
        }

        public void ExpireIfDue(TimerWheel wheel, long now)
        {
            if (Disposed || _deadline < 0 || _deadline - wheel.OriginTimestamp >= NeverSinceOrigin)
            {
                return;
            }

            if (wheel.StartOfTick(wheel.DueTickOf(_deadline)) <= now)
            {
                Fired++;
                _deadline = _period == 0 ? -1 : TimerWheel.SaturatingAdd(now, _period); // measured from the firing
            }
        }
    }
}
