using System.Runtime.CompilerServices;
using Scheduler.Timers;

namespace Scheduler.Tests.Timers;

/// <summary>
/// Tests written by a manual mutation-testing round of Scheduler/Timers: each one kills a mutant of the library (named
/// in its comment) that no other test caught, and passes on the unmutated code. The wheels run on a hand-moved clock with
/// no driver (RunDueTimers) wherever time matters, so what they assert does not depend on the machine's timing.
/// </summary>
public sealed class TimerMutationKillTests
{
    private static readonly TimeSpan Tick = TimeSpan.FromMilliseconds(1);
    private static readonly TimeSpan Guard = TimeSpan.FromSeconds(10);

    // How long a callback queued in the same batch as a witness that has run gets to show up as well.
    private static readonly TimeSpan Settle = TimeSpan.FromMilliseconds(200);

    private static TimerWheel ManualWheel(ManualClock clock) =>
        new(Tick, clock, startDriver: false) { NurseriesEnabled = false };

    // Kills: WheelTimer.cs Fire, `token == Volatile.Read(ref _intent)` removed — an expiry already taken off the wheel
    // but not yet queued still queued the callback after a Change that disarmed the timer had returned (docs/timers.md,
    // ITimer.Change: "an expiry of an older schedule that has not reached the ThreadPool when the call returns is
    // dropped (intent check)"). The disarm runs in that window: a delay due in the same batch is completed first, and
    // its continuation runs inline (a SynchronizationContext whose Post runs the callback at once). A witness timer due
    // in the same batch shows when the ThreadPool has run what that batch queued.
    [Fact]
    public async Task A_disarm_made_after_the_expiry_but_before_the_callback_was_queued_drops_that_callback()
    {
        var clock = new ManualClock();
        using var wheel = ManualWheel(clock);
        var counter = new CallbackCounter();
        var witness = new CallbackCounter();
        using ITimer timer = wheel.CreateTimer(counter.Callback, null, TimeSpan.FromMilliseconds(5), Timeout.InfiniteTimeSpan);
        using ITimer witnessTimer = wheel.CreateTimer(witness.Callback, null, TimeSpan.FromMilliseconds(5), Timeout.InfiniteTimeSpan);
        Func<bool?> disarmed = StartDelayWithInlineContinuation(wheel, () => timer.Change(Timeout.InfiniteTimeSpan, Timeout.InfiniteTimeSpan));
        wheel.RunDueTimers();
        disarmed().Should().BeNull("the delay is not due yet");

        clock.Advance(TimeSpan.FromMilliseconds(5));
        wheel.RunDueTimers();
        disarmed().Should().BeTrue("the delay's continuation ran inline, between the timers' expiry and their firing");

        await witness.WaitForAsync(1);
        await Task.Delay(Settle);
        counter.Count.Should().Be(0, "the disarm returned before the expiry reached the ThreadPool");
        wheel.PendingCount.Should().Be(0);
    }

    // Kills: TimerWheel.Delay.cs DelayAsync, the ObjectDisposedException check moved after the canceled-token and
    // zero-delay shortcuts — a disposed wheel handed out completed (or canceled) delays instead of refusing them
    // (docs/timers.md, TimerWheel.Dispose: "DelayAsync, CreateTimer and ITimer.Change throw ObjectDisposedException";
    // the existing tests asked only with a positive delay). CreateTimer's own check is pinned here too, for a disarmed
    // and a due-now timer (neither reaches the pending stack, whose refusal also throws for armed ones).
    [Fact]
    public void A_disposed_wheel_refuses_every_DelayAsync_and_CreateTimer_whatever_the_arguments()
    {
        var wheel = new TimerWheel(Tick, new ManualClock(), startDriver: false);
        wheel.Dispose();
        using var canceled = new CancellationTokenSource();
        canceled.Cancel();

        FluentActions.Invoking(() => wheel.DelayAsync(TimeSpan.Zero)).Should().Throw<ObjectDisposedException>();
        FluentActions.Invoking(() => wheel.DelayAsync(TimeSpan.Zero, canceled.Token)).Should().Throw<ObjectDisposedException>();
        FluentActions.Invoking(() => wheel.DelayAsync(TimeSpan.FromSeconds(1), canceled.Token)).Should().Throw<ObjectDisposedException>();
        FluentActions.Invoking(() => wheel.DelayAsync(Timeout.InfiniteTimeSpan)).Should().Throw<ObjectDisposedException>();

        int called = 0;
        TimerCallback callback = _ => Interlocked.Increment(ref called);
        FluentActions.Invoking(() => wheel.CreateTimer(callback, null, Timeout.InfiniteTimeSpan, Timeout.InfiniteTimeSpan)).Should().Throw<ObjectDisposedException>();
        FluentActions.Invoking(() => wheel.CreateTimer(callback, null, TimeSpan.Zero, Timeout.InfiniteTimeSpan)).Should().Throw<ObjectDisposedException>();
        FluentActions.Invoking(() => wheel.CreateTimer(callback, null, TimeSpan.FromMilliseconds(5), TimeSpan.FromMilliseconds(5))).Should().Throw<ObjectDisposedException>();
        called.Should().Be(0);
    }

    // Kills: WheelTimer.cs ComputeIntent, `fireNow ? SaturatingAdd(now, periodUnits) : DeadlineAfter(now, dueTime)` made
    // always the second — a periodic timer due now fires at once, and its next firing is a period later; the mutant
    // scheduled that next one for now as well, so the timer fired twice at its start (docs/timers.md: "A periodic timer
    // due now fires at once and then every period").
    [Fact]
    public async Task A_periodic_timer_due_now_fires_at_once_and_next_a_whole_period_later()
    {
        var clock = new ManualClock();
        using var wheel = ManualWheel(clock);
        var counter = new CallbackCounter();
        using ITimer timer = wheel.CreateTimer(counter.Callback, null, TimeSpan.Zero, TimeSpan.FromMilliseconds(10));
        await counter.WaitForAsync(1);
        wheel.RunDueTimers();
        clock.Advance(TimeSpan.FromMilliseconds(5));
        wheel.RunDueTimers();
        await Task.Delay(Settle);
        counter.Count.Should().Be(1, "half a period after the first firing, the second is not due");

        clock.Advance(TimeSpan.FromMilliseconds(5));
        wheel.RunDueTimers();
        await counter.WaitForAsync(2);
    }

    // Kills: WheelTimer.cs Change, the `else if (TimerIntent.IsAbsolute(intent))` branch's `RequestDrainBy(deadline)`
    // removed (or its condition negated) — a Change on a timer already waiting to be reconciled does not push it again,
    // and the drain that push asked for may come too late for this arm: the driver must be asked for a drain by the new
    // deadline, or a short re-arm of a timer just armed long fires late.
    [Fact]
    public void A_short_rearm_of_a_timer_waiting_to_be_reconciled_asks_for_a_drain_by_its_own_deadline()
    {
        var clock = new ManualClock();
        using var wheel = ManualWheel(clock);
        using ITimer timer = wheel.CreateTimer(static _ => { }, null, TimeSpan.FromMinutes(1), Timeout.InfiniteTimeSpan);
        wheel.LinkedCount.Should().Be(0, "the new timer waits on the pending stack (PendingCount would drain it)");
        wheel.ForgetDrainRequest(); // stands for a request made for a later deadline

        timer.Change(TimeSpan.FromMilliseconds(1), Timeout.InfiniteTimeSpan);
        wheel.DrainRequestTimestamp.Should().BeLessThanOrEqualTo(
            clock.Now + StopwatchUnits.From(TimeSpan.FromMilliseconds(2)),
            "the re-armed timer is due in 1 ms (one tick of slack)");
    }

    // Kills: TimerWheel.Pending.cs TryPushPending (no deadline), `AfterPush(wasEmpty)` removed, its condition negated, or
    // TryPush's `wasEmpty = head is null` negated — a change with no deadline of its own (a disarm, a cancel, a relative
    // arm) that finds the stack empty must ask for a drain within the reconcile interval: later pushes count on that
    // request. Without it a disarmed timer stayed linked, and a relative arm unscheduled, until something else asked
    // (TimeProviderTests' re-armed CancelAfter never fired).
    [Fact]
    public void A_disarm_pushed_onto_an_empty_stack_asks_for_a_drain_within_the_reconcile_interval()
    {
        var clock = new ManualClock();
        using var wheel = ManualWheel(clock);
        using ITimer timer = wheel.CreateTimer(static _ => { }, null, TimeSpan.FromMinutes(1), Timeout.InfiniteTimeSpan);
        wheel.RunDueTimers();
        wheel.LinkedCount.Should().Be(1, "the drain linked the timer");
        wheel.ForgetDrainRequest(); // nothing else asks: only the disarm can

        timer.Change(Timeout.InfiniteTimeSpan, Timeout.InfiniteTimeSpan);
        wheel.DrainRequestTimestamp.Should().BeLessThanOrEqualTo(
            clock.Now + StopwatchUnits.From(TimeSpan.FromMilliseconds(4)),
            "the disarm waits on the stack, and is reconciled within the 4-ms interval");
        wheel.RunDueTimers();
        wheel.LinkedCount.Should().Be(0, "the drain unlinked the disarmed timer");
    }

    // Kills: DelaySlab.cs TryPushPending, `wasEmpty = head == Empty` negated (session 44) — the delays' half of the test
    // above: a cancel has no deadline of its own, and the one that finds the delays' stack empty must ask for a drain
    // within the reconcile interval. Under the mutant only a push onto a non-empty stack asked, and a lone cancelled
    // delay stayed linked in the wheel until something else asked.
    [Fact]
    public async Task A_delay_cancel_pushed_onto_an_empty_stack_asks_for_a_drain_within_the_reconcile_interval()
    {
        var clock = new ManualClock();
        using var wheel = ManualWheel(clock);
        using var cancel = new CancellationTokenSource();
        ValueTask delay = wheel.DelayAsync(TimeSpan.FromMinutes(1), cancel.Token);
        wheel.RunDueTimers();
        wheel.ForgetDrainRequest(); // nothing else asks: only the cancel can

        cancel.Cancel();
        wheel.DrainRequestTimestamp.Should().BeLessThanOrEqualTo(
            clock.Now + StopwatchUnits.From(TimeSpan.FromMilliseconds(4)),
            "the cancel waits on the stack to unlink the delay, and is reconciled within the 4-ms interval");
        await FluentActions.Awaiting(async () => await delay).Should().ThrowAsync<OperationCanceledException>();
    }

    // Kills: TimerWheel.Pending.cs TryDrainInline, the `return false` of a wheel lock held by another thread made
    // `return true` — the batch's last push (every ReconcileBatch-th) drains the stack on its own thread when the lock is
    // free; when the driver or another pusher holds it, nothing is drained, and the push must still ask for a drain by
    // its arm's deadline. Under the mutant it asked for none, and a short arm waited for whatever request came next.
    [Fact]
    public void A_batchs_last_push_that_finds_the_wheel_lock_held_still_asks_for_a_drain_by_its_deadline()
    {
        var clock = new ManualClock();
        using var wheel = ManualWheel(clock);
        using var batch = new OneShortOfAReconcileBatch(wheel);
        wheel.ForgetDrainRequest(); // stands for a request made for a later time

        using var lockHeld = new ManualResetEventSlim();
        using var release = new ManualResetEventSlim();
        var holder = new Thread(() =>
        {
            lock (wheel.SyncRoot)
            {
                lockHeld.Set();
                release.Wait(Guard);
            }
        });
        holder.Start();
        ITimer last;
        try
        {
            lockHeld.Wait(Guard).Should().BeTrue();
            last = wheel.CreateTimer(static _ => { }, null, TimeSpan.FromMilliseconds(1), Timeout.InfiniteTimeSpan);
        }
        finally
        {
            release.Set();
            holder.Join();
        }

        wheel.LinkedCount.Should().Be(0, "the lock was held: the batch's last push drained nothing");
        wheel.DrainRequestTimestamp.Should().BeLessThanOrEqualTo(
            clock.Now + StopwatchUnits.From(TimeSpan.FromMilliseconds(2)),
            "the last timer is due in 1 ms (one tick of slack)");
        last.Dispose();
    }

    // Kills: WheelTimer.cs Change, `(intent & TimerIntent.Periodic) != 0` made `(intent | TimerIntent.Periodic) != 0` —
    // every one-shot Change took the periodic writer's path: the wheel-wide PeriodicWriterLock on each call and, at the
    // first one, the period's extras object, which only a periodic timer needs (docs/timers.md: the timeout pattern's
    // Change is plain stores and loads). Checked through what the calls allocate: nothing, however often a timer is
    // re-armed and disarmed, once the wheel and the timer exist.
    [Fact]
    public void Re_arming_and_disarming_a_one_shot_timer_allocates_nothing()
    {
        var clock = new ManualClock();
        using var wheel = ManualWheel(clock);
        using ITimer timer = wheel.CreateTimer(static _ => { }, null, Timeout.InfiniteTimeSpan, Timeout.InfiniteTimeSpan);
        timer.Change(TimeSpan.FromMilliseconds(5), Timeout.InfiniteTimeSpan); // first calls JIT-compiled, outside the count
        timer.Change(TimeSpan.FromSeconds(30), Timeout.InfiniteTimeSpan);
        timer.Change(Timeout.InfiniteTimeSpan, Timeout.InfiniteTimeSpan);
        wheel.RunDueTimers();
        using ITimer fresh = wheel.CreateTimer(static _ => { }, null, Timeout.InfiniteTimeSpan, Timeout.InfiniteTimeSpan);

        long before = GC.GetAllocatedBytesForCurrentThread();
        for (int i = 0; i < 100; i++)
        {
            fresh.Change(TimeSpan.FromMilliseconds(5 + i), Timeout.InfiniteTimeSpan);
            fresh.Change(TimeSpan.FromSeconds(30), Timeout.InfiniteTimeSpan);
            fresh.Change(Timeout.InfiniteTimeSpan, Timeout.InfiniteTimeSpan);
        }

        long allocated = GC.GetAllocatedBytesForCurrentThread() - before;
        allocated.Should().Be(0, "a one-shot Change writes the intent word and at most pushes the timer itself");
    }

    /// <summary>
    /// Starts a delay of 5 ms whose continuation runs inline (a SynchronizationContext whose Post runs it at once), on
    /// whatever thread completes it. Returns a reader of what <paramref name="continuation"/> returned (null until it ran);
    /// the continuation consumes the delay first.
    /// </summary>
    private static Func<bool?> StartDelayWithInlineContinuation(TimerWheel wheel, Func<bool> continuation)
    {
        bool? returned = null;
#pragma warning disable CA2012 // consumed once, by the continuation, once it has completed
        ValueTask delay = wheel.DelayAsync(TimeSpan.FromMilliseconds(5));
#pragma warning restore CA2012
        SynchronizationContext? previous = SynchronizationContext.Current;
        SynchronizationContext.SetSynchronizationContext(new InlineSynchronizationContext());
        try
        {
            ValueTaskAwaiter awaiter = delay.GetAwaiter();
            awaiter.OnCompleted(() =>
            {
#pragma warning disable CA2012 // read in its continuation: completed
                awaiter.GetResult();
#pragma warning restore CA2012
                returned = continuation();
            });
        }
        finally
        {
            SynchronizationContext.SetSynchronizationContext(previous);
        }

        return () => returned;
    }

    /// <summary>Counts a timer's callbacks (on the ThreadPool) and lets the test wait for a given count.</summary>
    private sealed class CallbackCounter
    {
        private int _count;

        public TimerCallback Callback => _ => Interlocked.Increment(ref _count);

        public int Count => Volatile.Read(ref _count);

        public async Task WaitForAsync(int count)
        {
            long start = System.Diagnostics.Stopwatch.GetTimestamp();
            while (Count < count)
            {
                System.Diagnostics.Stopwatch.GetElapsedTime(start).Should().BeLessThan(Guard, "callback {0} should have run", count);
                await Task.Delay(2);
            }
        }
    }
}
