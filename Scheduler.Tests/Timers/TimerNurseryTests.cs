using System.Collections.Concurrent;
using System.Diagnostics;
using System.Runtime.CompilerServices;
using Scheduler.Timers;

namespace Scheduler.Tests.Timers;

/// <summary>
/// Nurseries (TimerNursery, TimerWheel.Nurseries.cs): a new timer waits for its first reconcile in a ring of its
/// creating thread, filled with plain stores, instead of on the shared pending stack. These tests pin what that must
/// not change: every timer is reconciled by its deadline whichever thread created it (and whether that thread still
/// lives), a full ring is reconciled by its owner, an add nobody asked a drain for is caught by the driver's recheck,
/// and a thread moves on from a disposed wheel.
/// </summary>
public sealed class TimerNurseryTests
{
    private static readonly TimeSpan s_tick = TimeSpan.FromMilliseconds(1);
    private static readonly TimeSpan s_timeout = TimeSpan.FromSeconds(10);

    [Fact]
    public void A_full_nursery_is_reconciled_by_its_owner_and_the_rest_by_the_drain()
    {
        TimerWheel.UnbindThreadNursery(); // this test thread may still be bound to an earlier test's wheel
        var clock = new ManualClock();
        using var wheel = new TimerWheel(s_tick, clock, startDriver: false);
        const int Count = (3 * TimerNursery.Capacity) + 100;
        var timers = new ITimer[Count];
        for (int i = 0; i < Count; i++)
        {
            timers[i] = wheel.CreateTimer(static _ => { }, null, TimeSpan.FromMilliseconds(50), Timeout.InfiniteTimeSpan);
        }

        // No driver: only the owner's drains (one each time its ring was full) have linked anything so far.
        wheel.LinkedCount.Should().Be(3 * TimerNursery.Capacity);
        wheel.NurseryCount.Should().Be(1);
        wheel.PendingCount.Should().Be(Count, "a drain takes the rest from the nursery");
        foreach (ITimer timer in timers)
        {
            timer.Dispose();
        }

        wheel.PendingCount.Should().Be(0);
    }

    [Fact]
    public async Task Timers_created_by_threads_that_exit_fire_and_the_threads_are_pruned()
    {
        using var wheel = new TimerWheel(s_tick);
        const int Threads = 8;
        int fired = 0;
        var allFired = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        long createdAt = Stopwatch.GetTimestamp();
        var threads = new Thread[Threads];
        using var registered = new Barrier(Threads);
        for (int t = 0; t < Threads; t++)
        {
            // One short absolute arm and one relative (a second or more) per thread; the thread exits at once, its
            // timers still in its nursery: only the driver can take them in. (None exits before all have registered,
            // or a later registration could already shed it.)
            threads[t] = new Thread(() =>
            {
                wheel.CreateTimer(Fire, null, TimeSpan.FromMilliseconds(20), Timeout.InfiniteTimeSpan);
                wheel.CreateTimer(Fire, null, TimeSpan.FromSeconds(1), Timeout.InfiniteTimeSpan);
                registered.SignalAndWait();
            });
            threads[t].Start();
        }

        foreach (Thread thread in threads)
        {
            thread.Join();
        }

        await allFired.Task.WaitAsync(s_timeout);
        Stopwatch.GetElapsedTime(createdAt).Should().BeGreaterThanOrEqualTo(TimeSpan.FromSeconds(1));
        wheel.NurseryCount.Should().Be(Threads, "nothing registered since the threads exited");

        // The next thread to register sheds the exited ones (their rings are empty now).
        var last = new Thread(() => wheel.CreateTimer(static _ => { }, null, Timeout.InfiniteTimeSpan, TimeSpan.Zero).Change(TimeSpan.FromMinutes(1), Timeout.InfiniteTimeSpan));
        var lastArmed = new Thread(() => wheel.CreateTimer(static _ => { }, null, TimeSpan.FromMinutes(1), Timeout.InfiniteTimeSpan).Dispose());
        last.Start();
        last.Join();
        wheel.NurseryCount.Should().Be(Threads, "a timer created disarmed never waits in a nursery");
        lastArmed.Start();
        lastArmed.Join();
        wheel.NurseryCount.Should().Be(1);

        void Fire(object? state)
        {
            if (Interlocked.Increment(ref fired) == 2 * Threads)
            {
                allFired.TrySetResult();
            }
        }
    }

    [Fact]
    public async Task An_add_that_asked_no_drain_during_the_drivers_pass_is_caught_by_its_recheck()
    {
        TimerWheel.UnbindThreadNursery(); // this test thread may still be bound to an earlier test's wheel
        // The owner asks for a drain only when it finds its ring empty, reading the head after publishing the tail; a
        // drain that emptied the ring meanwhile may not have reached it (x86 store buffers), so the owner asks nothing
        // while the drain saw no new tail. The hook stands in for that owner: inside the pass, after the ring was
        // taken, it creates a timer and drops the request the creation made.
        var clock = new HookClock();
        using var wheel = new TimerWheel(s_tick, clock, startDriver: false) { RelativeArmsEnabled = true };
        var lateFired = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        using ITimer first = wheel.CreateTimer(static _ => { }, null, TimeSpan.FromSeconds(2), Timeout.InfiniteTimeSpan);
        ITimer? late = null;

        // RunDueTimers' own reading, then the one that links the relative arm the pass took from the nursery.
        clock.ReadsBeforeHook = 1;
        clock.OnNextRead = () =>
        {
            late = wheel.CreateTimer(_ => lateFired.TrySetResult(), null, TimeSpan.FromSeconds(2), Timeout.InfiniteTimeSpan);
            wheel.ForgetDrainRequest();
            return clock.GetTimestamp();
        };
        wheel.RunDueTimers();
        late.Should().NotBeNull("the hook ran inside the pass");
        wheel.DrainRequestTimestamp.Should().BeLessThanOrEqualTo(
            clock.GetTimestamp() + StopwatchUnits.From(TimeSpan.FromMilliseconds(4)),
            "after its barrier the pass saw the new entry and asked the driver back within the reconcile interval");

        clock.Advance(TimeSpan.FromMilliseconds(4));
        wheel.RunDueTimers();
        clock.Advance(TimeSpan.FromSeconds(2));
        wheel.RunDueTimers();
        await lateFired.Task.WaitAsync(s_timeout);
        late!.Dispose();
    }

    [Fact]
    public async Task A_thread_whose_wheel_was_disposed_binds_its_next_wheel_and_a_second_live_wheel_takes_the_stack()
    {
        TimerWheel.UnbindThreadNursery(); // this test thread may still be bound to an earlier test's wheel
        var first = new TimerWheel(s_tick);
        first.CreateTimer(static _ => { }, null, TimeSpan.FromMinutes(1), Timeout.InfiniteTimeSpan);
        first.NurseryCount.Should().Be(1);
        first.Dispose();
        FluentActions.Invoking(() => first.CreateTimer(static _ => { }, null, TimeSpan.FromMinutes(1), Timeout.InfiniteTimeSpan))
            .Should().Throw<ObjectDisposedException>();

        using var second = new TimerWheel(s_tick);
        using var third = new TimerWheel(s_tick);
        var secondFired = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var thirdFired = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        using ITimer onSecond = second.CreateTimer(_ => secondFired.TrySetResult(), null, TimeSpan.FromMilliseconds(10), Timeout.InfiniteTimeSpan);
        using ITimer onThird = third.CreateTimer(_ => thirdFired.TrySetResult(), null, TimeSpan.FromMilliseconds(10), Timeout.InfiniteTimeSpan);
        second.NurseryCount.Should().Be(1, "the thread's nursery left the disposed wheel for the next one it used");
        third.NurseryCount.Should().Be(0, "a thread has one nursery; other wheels take the shared stack");
        await Task.WhenAll(secondFired.Task, thirdFired.Task).WaitAsync(s_timeout);
    }

    [Fact]
    public void Changes_and_disposal_of_a_timer_still_in_its_nursery_are_applied_by_its_first_reconcile()
    {
        TimerWheel.UnbindThreadNursery(); // this test thread may still be bound to an earlier test's wheel
        var clock = new ManualClock();
        using var wheel = new TimerWheel(s_tick, clock, startDriver: false);
        int fired = 0;
        ITimer disposed = wheel.CreateTimer(_ => Interlocked.Increment(ref fired), null, TimeSpan.FromMilliseconds(5), Timeout.InfiniteTimeSpan);
        using ITimer moved = wheel.CreateTimer(_ => Interlocked.Increment(ref fired), null, TimeSpan.FromMilliseconds(5), Timeout.InfiniteTimeSpan);
        disposed.Dispose();
        moved.Change(TimeSpan.FromMilliseconds(50), Timeout.InfiniteTimeSpan).Should().BeTrue();
        wheel.LinkedCount.Should().Be(0, "both still wait in the nursery");

        clock.Advance(TimeSpan.FromMilliseconds(10));
        wheel.RunDueTimers();
        wheel.LinkedCount.Should().Be(1, "the disposed timer was never linked; the moved one waits for 50 ms");
        clock.Advance(TimeSpan.FromMilliseconds(41));
        wheel.RunDueTimers();
        SpinWait.SpinUntil(() => Volatile.Read(ref fired) == 1, s_timeout).Should().BeTrue();
        Thread.Sleep(20);
        Volatile.Read(ref fired).Should().Be(1);
    }

    [Fact]
    public async Task A_lone_long_timer_waiting_in_an_empty_nursery_asks_the_driver_in_and_fires()
    {
        // A relative arm (1 s or more) has no deadline for the creation to ask a drain by: only the add that finds its
        // ring empty asks for one within the reconcile interval. On an otherwise idle wheel nothing else ever would,
        // and the driver would sleep forever with the timer in the ring.
        TimerWheel.UnbindThreadNursery(); // this test thread may still be bound to an earlier test's wheel
        using var wheel = new TimerWheel(s_tick);
        var fired = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        long createdAt = Stopwatch.GetTimestamp();
        using ITimer timer = wheel.CreateTimer(_ => fired.TrySetResult(), null, TimeSpan.FromSeconds(1), Timeout.InfiniteTimeSpan);
        wheel.NurseryCount.Should().Be(1, "the timer waits in this thread's nursery");
        await fired.Task.WaitAsync(s_timeout);
        Stopwatch.GetElapsedTime(createdAt).Should().BeGreaterThanOrEqualTo(TimeSpan.FromSeconds(1));
    }

    [Fact]
    public void A_registration_keeps_the_nursery_of_an_exited_thread_until_its_timers_are_taken()
    {
        // No driver: the timer of the exited thread stays in its ring until a drain. A later thread's registration
        // sheds exited threads' nurseries, but only empty ones: shedding this one would lose the timer for good.
        var clock = new ManualClock();
        using var wheel = new TimerWheel(s_tick, clock, startDriver: false);
        int fired = 0;
        var exited = new Thread(() => wheel.CreateTimer(_ => Interlocked.Increment(ref fired), null, TimeSpan.FromMilliseconds(10), Timeout.InfiniteTimeSpan));
        exited.Start();
        exited.Join();
        wheel.LinkedCount.Should().Be(0, "the timer still waits in the exited thread's nursery");

        var registering = new Thread(() => wheel.CreateTimer(static _ => { }, null, TimeSpan.FromMinutes(1), Timeout.InfiniteTimeSpan).Dispose());
        registering.Start();
        registering.Join();
        wheel.NurseryCount.Should().Be(2, "the exited thread's nursery still held a timer when the second thread registered");

        clock.Advance(TimeSpan.FromMilliseconds(10));
        wheel.RunDueTimers();
        SpinWait.SpinUntil(() => Volatile.Read(ref fired) == 1, s_timeout).Should().BeTrue("the exited thread's timer was taken in and fired");

        // Both rings are empty now and both threads have exited: the next registration sheds them.
        var last = new Thread(() => wheel.CreateTimer(static _ => { }, null, TimeSpan.FromMinutes(1), Timeout.InfiniteTimeSpan).Dispose());
        last.Start();
        last.Join();
        wheel.NurseryCount.Should().Be(1);
    }

    [Fact]
    public void An_exited_threads_nursery_lets_go_of_its_thread_once_shed()
    {
        // The nursery of a thread is found through a process-wide table indexed by managed thread id
        // (ThreadNurseries); a slot that kept an exited thread's nursery would keep its Thread object, and that id,
        // for the life of the process.
        var clock = new ManualClock();
        using var wheel = new TimerWheel(s_tick, clock, startDriver: false);
        WeakReference exited = CreateOnExitedThread(wheel);
        wheel.RunDueTimers(); // takes in (and unlinks) the exited thread's disposed timer: its ring is empty now

        var registering = new Thread(() => wheel.CreateTimer(static _ => { }, null, TimeSpan.FromMinutes(1), Timeout.InfiniteTimeSpan).Dispose());
        registering.Start();
        registering.Join();
        wheel.NurseryCount.Should().Be(1, "the registration shed the exited thread's nursery");
        Collected.Await(exited);
        exited.IsAlive.Should().BeFalse("nothing may keep the exited thread once its nursery is shed");
    }

    [Fact]
    public void Disposing_a_wheel_lets_go_of_the_threads_of_its_nurseries()
    {
        var clock = new ManualClock();
        var wheel = new TimerWheel(s_tick, clock, startDriver: false);
        WeakReference exited = CreateOnExitedThread(wheel);
        wheel.Dispose();
        Collected.Await(exited);
        exited.IsAlive.Should().BeFalse("a closed nursery's slot must not keep its exited thread");
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private static WeakReference CreateOnExitedThread(TimerWheel wheel)
    {
        var thread = new Thread(() => wheel.CreateTimer(static _ => { }, null, TimeSpan.FromMinutes(1), Timeout.InfiniteTimeSpan).Dispose());
        thread.Start();
        thread.Join();
        return new WeakReference(thread);
    }

    /// <summary>
    /// Kills: TimerWheel.Nurseries.cs TryAddToNursery, <c>if (absolute)</c> negated. A timer created into a nursery asks
    /// the driver for a drain: by its own deadline when that comes before the reconcile interval ends (an absolute
    /// arm due in 1 ms), within the interval otherwise (a relative arm, only when the ring was empty). Negated, the 1-ms
    /// timer asked only for the interval's 4 ms (late), and the relative arm for a drain at once.
    /// </summary>
    [Fact]
    public void A_timer_created_into_a_nursery_asks_for_the_drain_its_arm_needs()
    {
        TimerWheel.UnbindThreadNursery(); // this test thread may still be bound to an earlier test's wheel
        var clock = new ManualClock();
        using var wheel = new TimerWheel(s_tick, clock, startDriver: false) { RelativeArmsEnabled = true };
        long reconcileInterval = StopwatchUnits.From(TimeSpan.FromMilliseconds(4));

        using ITimer relative = wheel.CreateTimer(static _ => { }, null, TimeSpan.FromMinutes(1), Timeout.InfiniteTimeSpan);
        wheel.NurseryCount.Should().Be(1, "the timer went to this thread's nursery");
        wheel.DrainRequestTimestamp.Should().Be(clock.Now + reconcileInterval, "a relative arm is reconciled within the interval");

        wheel.ForgetDrainRequest(); // stands for a driver pass that took the request but not this ring
        using ITimer soon = wheel.CreateTimer(static _ => { }, null, TimeSpan.FromMilliseconds(1), Timeout.InfiniteTimeSpan);
        wheel.DrainRequestTimestamp.Should().BeLessThanOrEqualTo(
            clock.Now + StopwatchUnits.From(TimeSpan.FromMilliseconds(2)),
            "a timer due in 1 ms asks for a drain by its deadline (one tick of slack), not the interval's 4 ms");
    }
}

/// <summary>
/// Threads creating and disposing timers on one wheel while its driver drains their nurseries: every kept timer fires
/// once and never early, no disposed one fires, whatever the interleaving of owners and driver.
/// </summary>
[Collection(StressGroup.Name)]
public sealed class TimerNurseryStressTests
{
    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(3)]
    public async Task Timers_created_on_many_threads_fire_once_never_early_and_disposed_ones_never(int seed)
    {
        using var wheel = new TimerWheel(TimeSpan.FromMilliseconds(1));
        const int Threads = 4;
        const int PerThread = 20_000;
        var kept = new ConcurrentBag<(long Deadline, StrongBox<long> FiredAt)>();
        int keptCount = 0;
        int firedCount = 0;
        int disposedFired = 0;
        using var ready = new Barrier(Threads);
        var threads = new Thread[Threads];
        for (int t = 0; t < Threads; t++)
        {
            var random = new Random((seed * 100) + t);
            threads[t] = new Thread(() =>
            {
                ready.SignalAndWait();
                for (int i = 0; i < PerThread; i++)
                {
                    if (random.Next(50) != 0)
                    {
                        // The timeout pattern: most timers are disposed right after they are created. A thread preempted
                        // between the two may dispose after the deadline, when firing is allowed; only a timer whose
                        // Dispose returned before its deadline (measured before the creation, so no later than the
                        // wheel's) must stay silent.
                        TimeSpan shortDue = TimeSpan.FromMilliseconds(1 + random.Next(5));
                        var disposal = new StrongBox<bool>(false);
                        long earliestDeadline = Stopwatch.GetTimestamp() + StopwatchUnits.From(shortDue);
                        wheel.CreateTimer(
                            state =>
                            {
                                if (Volatile.Read(ref ((StrongBox<bool>)state!).Value))
                                {
                                    Interlocked.Increment(ref disposedFired);
                                }
                            },
                            disposal,
                            shortDue,
                            Timeout.InfiniteTimeSpan).Dispose();
                        Volatile.Write(ref disposal.Value, Stopwatch.GetTimestamp() < earliestDeadline);
                        continue;
                    }

                    var firedAt = new StrongBox<long>(0);
                    TimeSpan due = TimeSpan.FromMilliseconds(1 + random.Next(30));
                    long deadline = Stopwatch.GetTimestamp() + StopwatchUnits.From(due);
                    Interlocked.Increment(ref keptCount);
                    kept.Add((deadline, firedAt));
                    wheel.CreateTimer(
                        _ =>
                        {
                            Interlocked.CompareExchange(ref firedAt.Value, Stopwatch.GetTimestamp(), 0).Should().Be(0, "a one-shot timer fires once");
                            Interlocked.Increment(ref firedCount);
                        },
                        null,
                        due,
                        Timeout.InfiniteTimeSpan);
                }
            });
            threads[t].Start();
        }

        foreach (Thread thread in threads)
        {
            thread.Join();
        }

        var waited = Stopwatch.StartNew();
        while (Volatile.Read(ref firedCount) < Volatile.Read(ref keptCount) && waited.Elapsed < TimeSpan.FromSeconds(20))
        {
            await Task.Delay(10);
        }

        Volatile.Read(ref firedCount).Should().Be(keptCount, "every kept timer fires, including those its thread left in its nursery");
        foreach ((long deadline, StrongBox<long> firedAt) in kept)
        {
            firedAt.Value.Should().BeGreaterThanOrEqualTo(deadline, "a timer never fires before its deadline");
        }

        await Task.Delay(50);
        Volatile.Read(ref disposedFired).Should().Be(0, "a timer disposed before its deadline never fires");
        wheel.PendingCount.Should().Be(0);
    }

    /// <summary>
    /// Wheel disposal closes every nursery under the lock while their owners may be adding to them without it. A
    /// creation racing the disposal either returns a timer or throws ObjectDisposedException; once Dispose returned,
    /// nothing fires any more (beyond callbacks already handed to the ThreadPool); and every creating thread then binds
    /// a nursery on its next wheel, whose timer fires.
    /// </summary>
    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(3)]
    public async Task Creations_racing_the_wheels_disposal_fail_cleanly_and_nothing_fires_after_it(int seed)
    {
        const int Threads = 4;
        var wheel = new TimerWheel(TimeSpan.FromMilliseconds(1));
        using var next = new TimerWheel(TimeSpan.FromMilliseconds(1));
        int fired = 0;
        int created = 0;
        var unexpected = new ConcurrentQueue<Exception>();
        using var firedOnNext = new CountdownEvent(Threads);
        using var ready = new Barrier(Threads + 1);
        var threads = new Thread[Threads];
        for (int t = 0; t < Threads; t++)
        {
            var random = new Random((seed * 100) + t);
            threads[t] = new Thread(() =>
            {
                ready.SignalAndWait();
                while (true)
                {
                    try
                    {
                        wheel.CreateTimer(_ => Interlocked.Increment(ref fired), null, TimeSpan.FromMilliseconds(1 + random.Next(3)), Timeout.InfiniteTimeSpan);
                        Interlocked.Increment(ref created);
                    }
                    catch (ObjectDisposedException)
                    {
                        break;
                    }
                    catch (Exception exception)
                    {
                        unexpected.Enqueue(exception);
                        break;
                    }
                }

                next.CreateTimer(_ => firedOnNext.Signal(), null, TimeSpan.FromMilliseconds(2), Timeout.InfiniteTimeSpan);
            });
            threads[t].Start();
        }

        ready.SignalAndWait();

        // The race needs creations before the disposal; on a loaded machine the creating threads may get no CPU within
        // the pause alone (seen: nothing created), so the pause starts once one creation went through.
        SpinWait.SpinUntil(() => Volatile.Read(ref created) > 0, TimeSpan.FromSeconds(10)).Should().BeTrue("the creating threads started");
        Thread.Sleep(new Random(seed).Next(5, 30));
        wheel.Dispose();
        foreach (Thread thread in threads)
        {
            thread.Join();
        }

        unexpected.Should().BeEmpty();
        Volatile.Read(ref created).Should().BePositive();
        firedOnNext.Wait(TimeSpan.FromSeconds(10)).Should().BeTrue("each thread's creation on the next wheel fires");

        await Task.Delay(20); // callbacks queued to the ThreadPool before the disposal may still run
        int afterDispose = Volatile.Read(ref fired);
        await Task.Delay(100);
        Volatile.Read(ref fired).Should().Be(afterDispose, "a disposed wheel fires nothing");
    }

    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    public void Generations_of_short_lived_threads_reuse_ids_and_every_kept_timer_fires_once_never_early(int seed)
    {
        // Nurseries are found by managed thread id (ThreadNurseries), and the runtime hands an exited thread's id to a new
        // thread once the old Thread object is collected, which happens only after the wheel has shed its nursery and
        // cleared its slot. Generation after generation of threads then land on slots that earlier threads used.
        using var wheel = new TimerWheel(TimeSpan.FromMilliseconds(1));
        const int Generations = 12;
        const int ThreadsPerGeneration = 8;
        const int PerThread = 60;
        var random = new Random(seed);
        var ids = new HashSet<int>();
        var fireCounts = new ConcurrentBag<StrongBox<int>>();
        long early = 0;
        for (int generation = 0; generation < Generations; generation++)
        {
            int keptThisGeneration = 0;
            using var generationFired = new CountdownEvent(1);
            var threads = new Thread[ThreadsPerGeneration];
            for (int t = 0; t < threads.Length; t++)
            {
                int threadSeed = random.Next();
                threads[t] = new Thread(() =>
                {
                    var local = new Random(threadSeed);
                    for (int i = 0; i < PerThread; i++)
                    {
                        TimeSpan due = TimeSpan.FromMilliseconds(1 + local.Next(10));
                        if (local.Next(4) != 0)
                        {
                            wheel.CreateTimer(static _ => { }, null, due, Timeout.InfiniteTimeSpan).Dispose();
                            continue;
                        }

                        var count = new StrongBox<int>();
                        long deadline = Stopwatch.GetTimestamp() + StopwatchUnits.From(due);
                        fireCounts.Add(count);
                        Interlocked.Increment(ref keptThisGeneration);
                        generationFired.AddCount();
                        wheel.CreateTimer(
                            _ =>
                            {
                                if (Stopwatch.GetTimestamp() < deadline)
                                {
                                    Interlocked.Increment(ref early);
                                }

                                if (Interlocked.Increment(ref count.Value) == 1)
                                {
                                    generationFired.Signal();
                                }
                            },
                            null,
                            due,
                            Timeout.InfiniteTimeSpan);
                    }
                });
                threads[t].Start();
                lock (ids)
                {
                    ids.Add(threads[t].ManagedThreadId);
                }
            }

            foreach (Thread thread in threads)
            {
                thread.Join();
            }

            generationFired.Signal();
            generationFired.Wait(TimeSpan.FromSeconds(10)).Should().BeTrue($"generation {generation}'s {keptThisGeneration} kept timers fire");

            // Let the exited threads' objects go (those whose nurseries the next generation sheds), so their ids come back.
            GC.Collect();
            GC.WaitForPendingFinalizers();
        }

        Thread.Sleep(30); // a second firing would come within the reconcile interval
        Interlocked.Read(ref early).Should().Be(0);
        fireCounts.Should().OnlyContain(count => count.Value == 1);
        ids.Count.Should().BeLessThan(Generations * ThreadsPerGeneration, "ids of exited threads were handed to later threads");
        wheel.NurseryCount.Should().BeLessThanOrEqualTo(2 * ThreadsPerGeneration, "exited threads' nurseries are shed");
    }
}
