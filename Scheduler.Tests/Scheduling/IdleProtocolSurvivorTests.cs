using IdleCoordinator = Scheduler.WorkStealingTaskScheduler.IdleCoordinator;
using Worker = Scheduler.WorkStealingTaskScheduler.Worker;

namespace Scheduler.Tests.Scheduling;

/// <summary>
/// Tests written from a Stryker.NET run over Scheduler/Scheduling/WorkStealingTaskScheduler.Idle.cs (the park/wake tests
/// only: ParkWakeStress, InboxWake, IdleCpu, Spinning, ExecutionTests and the two MutationKill classes): each one checks a
/// step of the park/wake bookkeeping (docs/scheduling.md, "The park/wake protocol and why no wake-up is lost") that a
/// surviving mutant (named in its comment as "Survivor") showed no test checked, and passes on the unmutated code. The
/// mutants named "Also" were caught there too, most only by a test's timeout (a hang); these catch them at once, from
/// one thread. Every one was checked by hand: applied, seen to fail here, reverted. The survivors left are equivalent (an extra
/// fence on a path that then wakes nobody) or only observable in a race window (NotifyOne's fence and second read while a
/// search ends, the process-wide barrier after a park): no test from one thread can reach them. The scheduler's own
/// workers park and wake at moments a test does not choose, so these drive an <see cref="IdleCoordinator"/> of their own,
/// from one thread, with workers that were never started: every step is then deterministic, and what it did is read off
/// the workers (<see cref="Worker.IsParked"/>, <see cref="Worker.WokenAsSearcher"/>) and the searching count
/// (<see cref="IdleCoordinator.TryBeginSearching"/>, <see cref="IdleCoordinator.EndSearching"/>).
/// </summary>
public sealed class IdleProtocolSurvivorTests
{
    // How long a NotifyOne that must not take the idle lock may take on a thread of its own while the lock is held: long
    // enough for a new thread to start on a loaded machine, and only ever waited out in full by a mutant.
    private static readonly TimeSpan LockProbeBound = TimeSpan.FromSeconds(10);

    // Survivors: TryBeginSearching, `2 * searching >= _workerCount` mutated to `>` (a third searcher of four), to `<` and
    // negated, and `& SearchingMask` to `|`. Also: `2 / searching`, the increment removed or made a decrement, `return
    // true` to false; EndSearching, `&` to `|`, `== 0` to `!= 0`. Searchers are admitted until half the workers search, and only the last
    // one to end is told it was the last (it then looks for work left behind).
    [Fact]
    public void Searching_is_admitted_until_half_the_workers_search_and_only_the_last_searcher_to_end_is_told_so()
    {
        var idle = new IdleCoordinator(4);
        idle.TryBeginSearching().Should().BeTrue();
        idle.TryBeginSearching().Should().BeTrue();
        idle.TryBeginSearching().Should().BeFalse("two of four workers already search");

        idle.EndSearching().Should().BeFalse("one searcher is left");
        idle.TryBeginSearching().Should().BeTrue("only one of four searches now");
        idle.EndSearching().Should().BeFalse();
        idle.EndSearching().Should().BeTrue("the last searcher ended");

        var three = new IdleCoordinator(3);
        three.TryBeginSearching().Should().BeTrue();
        three.TryBeginSearching().Should().BeTrue("one of three is less than half");
        three.TryBeginSearching().Should().BeFalse("two of three are more than half");
    }

    // Also: NotifyOneSlow, `UnparkedUnit + 1` mutated to `UnparkedUnit - 1` and the Interlocked.Add removed, `asSearcher:
    // true` to false; Wake, `WokenAsSearcher = asSearcher` and `IsParked = false` removed; TransitionToParked, `IsParked =
    // true` to false and `_sleepers.Add` removed; ShouldWake, `== 0` to `!= 0`.
    // A notify with nobody searching wakes one sleeper, as a searcher, so that a second notify while it searches wakes
    // nobody (no thundering herd); once its search ends, the next notify wakes the other sleeper.
    [Fact]
    public void A_notify_wakes_one_sleeper_as_a_searcher_and_the_next_wakes_nobody_until_that_search_ends()
    {
        var idle = new IdleCoordinator(3);
        Worker[] workers = NewWorkers(3);

        idle.TransitionToParked(workers[0], wasSearching: false);
        idle.TransitionToParked(workers[1], wasSearching: false);
        workers[0].IsParked.Should().BeTrue();
        workers[1].IsParked.Should().BeTrue();

        idle.NotifyOne();
        Worker[] woken = workers.Take(2).Where(w => !w.IsParked).ToArray();
        woken.Should().ContainSingle("one item wakes one sleeper");
        woken[0].WokenAsSearcher.Should().BeTrue("a worker woken for queued work goes looking for it");
        Worker stillParked = workers.Take(2).Single(w => w.IsParked);

        idle.NotifyOne();
        stillParked.IsParked.Should().BeTrue("the woken worker still searches and will find the item");

        idle.EndSearching().Should().BeTrue("the woken worker was the only searcher");
        idle.NotifyOne();
        stillParked.IsParked.Should().BeFalse("with nobody searching, a notify wakes a sleeper");
        stillParked.WokenAsSearcher.Should().BeTrue();
    }

    // Also: ShouldWake with its searching check inverted (a wake-up while a search is under way), and
    // NotifyOneWhileSearching's `if` negated (the lock re-check then still wakes nobody, but every enqueue while a worker
    // searches and another sleeps goes through the idle lock). The producer side of "a searcher will find it": while any
    // worker searches, a notify wakes nobody, with a fence and a second read and without the lock; after the last search
    // ends, it wakes a sleeper.
    [Fact]
    public void A_notify_while_a_worker_searches_wakes_nobody_and_after_the_search_ends_wakes_a_sleeper()
    {
        var idle = new IdleCoordinator(2);
        Worker[] workers = NewWorkers(2);

        idle.TransitionToParked(workers[0], wasSearching: false);
        idle.TryBeginSearching().Should().BeTrue("the other worker starts searching");
        NotifyOneReturnsWhileTheLockIsHeld(idle).Should().BeTrue("a notify while a worker searches does not take the lock");
        idle.NotifyOne();
        workers[0].IsParked.Should().BeTrue("the searcher will find the item");

        idle.EndSearching().Should().BeTrue();
        idle.NotifyOne();
        workers[0].IsParked.Should().BeFalse("nobody searches any more, so the notify wakes the sleeper");
    }

    // Also: NotifyOneSlow, `ShouldWake(...) && _sleepers.Count != 0` mutated to `||`. A notify reads the state without the
    // lock and may then wait for it; the state it read may be stale by the time it gets the lock. If a worker began
    // searching meanwhile, that searcher will find the item, so the notify re-checks under the lock and wakes nobody.
    // Here the notify waits for the lock this thread holds while this thread begins a search: deterministic, whatever the
    // timing, because the notify has read the state (it only blocks on the lock after the read found a sleeper to wake).
    [Fact]
    public void A_notify_that_waited_for_the_lock_wakes_nobody_if_a_search_began_meanwhile()
    {
        var idle = new IdleCoordinator(2);
        Worker[] workers = NewWorkers(2);
        idle.TransitionToParked(workers[0], wasSearching: false);

        var notifier = new Thread(idle.NotifyOne) { IsBackground = true };
        using (idle.LockForTests.EnterScope())
        {
            notifier.Start();
            SpinWait.SpinUntil(() => (notifier.ThreadState & ThreadState.WaitSleepJoin) != 0, SchedulerTestHelpers.Timeout)
                .Should().BeTrue("the notify saw a sleeper and nobody searching, so it waits for the lock");
            idle.TryBeginSearching().Should().BeTrue("the other worker starts searching");
        }

        notifier.Join(SchedulerTestHelpers.Timeout).Should().BeTrue();
        workers[0].IsParked.Should().BeTrue("the searcher will find the item: no second worker is woken for it");
        idle.EndSearching().Should().BeTrue();
        idle.NotifyOne();
        workers[0].IsParked.Should().BeFalse("the sleeper is still on the list, and a notify now wakes it");
    }

    // Also: TransitionToParked, `wasSearching ? 1 : 0` mutated to always 1 or always 0, and `UnparkedUnit + ...` to
    // `UnparkedUnit - ...`. A searcher that parks stops searching (so another worker may start), and a worker that parks
    // without searching leaves the searching count alone.
    [Fact]
    public void Parking_ends_the_search_of_a_searcher_and_leaves_the_searching_count_alone_otherwise()
    {
        var idle = new IdleCoordinator(2);
        Worker[] workers = NewWorkers(2);

        idle.TryBeginSearching().Should().BeTrue();
        idle.TryBeginSearching().Should().BeFalse("one of two already searches");
        idle.TransitionToParked(workers[0], wasSearching: true);
        idle.TryBeginSearching().Should().BeTrue("the searcher that parked no longer searches");

        idle.TransitionToParked(workers[1], wasSearching: false);
        idle.TryBeginSearching().Should().BeFalse("the search begun above is still under way");
        idle.EndSearching().Should().BeTrue("it is the only search");
    }

    // Also: UnparkSpecific, `if (worker.IsParked)` negated, `_sleepers.Remove` removed, `asSearcher: false` to true. A
    // targeted unpark wakes that worker, not as a searcher (it has its own inbox to look at), takes it off the sleeper list
    // (so that a later notify wakes a worker that is really asleep), and does nothing to a worker that is awake.
    [Fact]
    public void Unparking_a_specific_worker_wakes_it_alone_not_as_a_searcher_and_leaves_an_awake_one_alone()
    {
        var idle = new IdleCoordinator(3);
        Worker[] workers = NewWorkers(3);

        idle.TransitionToParked(workers[1], wasSearching: false);
        idle.TransitionToParked(workers[0], wasSearching: false);

        idle.UnparkSpecific(workers[2]); // awake: nothing to do
        workers[2].IsParked.Should().BeFalse();
        workers[2].WokenAsSearcher.Should().BeFalse();

        idle.UnparkSpecific(workers[0]);
        workers[0].IsParked.Should().BeFalse();
        workers[0].WokenAsSearcher.Should().BeFalse("its inbox holds the work; it need not search");
        workers[1].IsParked.Should().BeTrue("the unpark was for worker 0 only");

        // The unparks above must have left the sleeper list and the unparked count right: one sleeper, one wake-up for it.
        idle.NotifyOne();
        workers[1].IsParked.Should().BeFalse("worker 1 is the only sleeper, so the notify wakes it");
    }

    // Survivors: UnparkSpecific and WakeAll with their `Interlocked.Add(ref _state, UnparkedUnit)` removed, and ShouldWake's
    // `(state >> 16) < _workerCount` mutated to `<=`. Also: TryUnparkSelf's Add removed, ShouldWake's `>>` to `<<`, and the
    // constructor's `workerCount * UnparkedUnit` to `/`. Once every worker is awake again, a notify is
    // one read of the state and no lock (the summary of NotifyParked: "cheap when there is nothing to do"); a count that
    // still showed a sleeper would send every enqueue of a busy scheduler through the lock.
    [Fact]
    public void Once_every_worker_is_unparked_again_a_notify_does_not_take_the_idle_lock()
    {
        Worker[] workers = NewWorkers(2);

        var fresh = new IdleCoordinator(2);
        NotifyOneReturnsWhileTheLockIsHeld(fresh).Should().BeTrue("every worker starts awake");

        var bySpecific = new IdleCoordinator(2);
        bySpecific.TransitionToParked(workers[0], wasSearching: false);
        bySpecific.UnparkSpecific(workers[0]);
        NotifyOneReturnsWhileTheLockIsHeld(bySpecific).Should().BeTrue("UnparkSpecific counted the worker as unparked");

        var bySelf = new IdleCoordinator(2);
        bySelf.TransitionToParked(workers[0], wasSearching: false);
        bySelf.TryUnparkSelf(workers[0]).Should().BeTrue();
        NotifyOneReturnsWhileTheLockIsHeld(bySelf).Should().BeTrue("TryUnparkSelf counted the worker as unparked");

        var byAll = new IdleCoordinator(2);
        byAll.TransitionToParked(workers[0], wasSearching: false);
        byAll.TransitionToParked(workers[1], wasSearching: false);
        byAll.WakeAll();
        NotifyOneReturnsWhileTheLockIsHeld(byAll).Should().BeTrue("WakeAll counted every worker as unparked");
    }

    // Also: TryUnparkSelf, `if (worker.IsParked)` negated, `_sleepers.Remove` removed, `IsParked = false` to true,
    // `unparked = true` to false and `unparked = false` to true. A parking worker that found work takes itself off the
    // sleeper list; one that a waker took off first is told so (it then carries on as woken), and changes nothing.
    [Fact]
    public void A_worker_that_unparks_itself_leaves_the_sleeper_list_and_one_a_waker_took_first_is_told_so()
    {
        var idle = new IdleCoordinator(3);
        Worker[] workers = NewWorkers(3);

        idle.TransitionToParked(workers[1], wasSearching: false);
        idle.TransitionToParked(workers[0], wasSearching: false);
        idle.TryUnparkSelf(workers[0]).Should().BeTrue();
        workers[0].IsParked.Should().BeFalse();
        idle.TryUnparkSelf(workers[2]).Should().BeFalse("worker 2 never parked");

        idle.NotifyOne();
        workers[1].IsParked.Should().BeFalse("worker 1 is the only sleeper, so the notify wakes it");
        idle.TryUnparkSelf(workers[1]).Should().BeFalse("the notify took worker 1 off the sleeper list first");

        // Neither call above counted a worker as unparked twice: worker 1 still searches, and alone.
        idle.TryBeginSearching().Should().BeTrue("one of three searches");
        idle.EndSearching().Should().BeFalse();
        idle.EndSearching().Should().BeTrue("worker 1 was the other searcher");
    }

    // Survivor: WakeAll, `_sleepers.Clear()` removed. Also: its `asSearcher: false` mutated to true. Shutdown and compensation wake
    // every sleeper (not as searchers) and empty the list, so that later parks and wake-ups start from a true list.
    [Fact]
    public void Waking_all_wakes_every_sleeper_not_as_a_searcher_and_empties_the_sleeper_list()
    {
        var idle = new IdleCoordinator(3);
        Worker[] workers = NewWorkers(3);

        idle.TransitionToParked(workers[0], wasSearching: false);
        idle.TransitionToParked(workers[1], wasSearching: false);
        idle.WakeAll();
        workers[0].IsParked.Should().BeFalse();
        workers[1].IsParked.Should().BeFalse();
        workers[0].WokenAsSearcher.Should().BeFalse();
        workers[1].WokenAsSearcher.Should().BeFalse();

        idle.TransitionToParked(workers[1], wasSearching: false);
        idle.TransitionToParked(workers[0], wasSearching: false);
        idle.UnparkSpecific(workers[0]);
        idle.NotifyOne();
        workers[1].IsParked.Should().BeFalse("worker 1 is the only sleeper, so the notify wakes it");
    }

    // Also: NotifyOneSlow, UnparkSpecific, TransitionToParked, TryUnparkSelf and WakeAll with `bool interrupted = false`
    // mutated to true. A step of the protocol that met no interrupt raises none: the caller (a producer, a worker) would
    // otherwise throw ThreadInterruptedException at its next blocking call for an interrupt nobody sent.
    [Fact]
    public void A_step_of_the_protocol_that_met_no_interrupt_leaves_its_caller_uninterrupted()
    {
        var idle = new IdleCoordinator(2);
        Worker[] workers = NewWorkers(2);

        foreach ((string step, Action action) in new (string, Action)[]
        {
            ("TransitionToParked", () => idle.TransitionToParked(workers[0], wasSearching: false)),
            ("NotifyOne", idle.NotifyOne),
            ("TransitionToParked", () => idle.TransitionToParked(workers[1], wasSearching: false)),
            ("UnparkSpecific", () => idle.UnparkSpecific(workers[1])),
            ("TransitionToParked", () => idle.TransitionToParked(workers[1], wasSearching: false)),
            ("TryUnparkSelf", () => idle.TryUnparkSelf(workers[1])),
            ("TransitionToParked", () => idle.TransitionToParked(workers[1], wasSearching: false)),
            ("WakeAll", idle.WakeAll),
        })
        {
            bool interruptedAfter = SchedulerTestHelpers.RunOnNewThread(() =>
            {
                action();
                return IsInterruptPending();
            });
            interruptedAfter.Should().BeFalse($"{step} met no interrupt");
        }

        workers[0].IsParked.Should().BeFalse("the steps above ran as listed");
        workers[1].IsParked.Should().BeFalse();
    }

    // Survivors: UnparkSpecific, TryUnparkSelf and WakeAll with `Uninterruptible.Restore(interrupted)` removed. Also:
    // TransitionToParked's. (NotifyOneSlow's survived too, but WorkerInterruptTests, outside the run, kills it.) A caller with an interrupt pending that meets the idle
    // lock contended has it swallowed by the wait so that the step completes; it must be raised again afterwards, for the
    // blocking call it was meant for.
    [Fact]
    public void A_step_of_the_protocol_that_meets_the_lock_contended_keeps_a_pending_interrupt_for_its_caller()
    {
        var idle = new IdleCoordinator(2);
        Worker[] workers = NewWorkers(2);

        foreach ((string step, Action action) in new (string, Action)[]
        {
            ("TransitionToParked", () => idle.TransitionToParked(workers[0], wasSearching: false)),
            ("UnparkSpecific", () => idle.UnparkSpecific(workers[0])),
            ("TransitionToParked", () => idle.TransitionToParked(workers[0], wasSearching: false)),
            ("TryUnparkSelf", () => idle.TryUnparkSelf(workers[0])),
            ("TransitionToParked", () => idle.TransitionToParked(workers[0], wasSearching: false)),
            ("WakeAll", idle.WakeAll),
        })
        {
            RunWithInterruptPendingAgainstTheHeldLock(idle, action).Should().BeTrue($"{step} must raise the interrupt it swallowed again");
        }

        workers[0].IsParked.Should().BeFalse("the steps above ran as listed");
    }

    // Workers that are never started (no thread, nothing runs): the coordinator only flags and signals them.
    private static Worker[] NewWorkers(int count) =>
        Enumerable.Range(0, count).Select(i => new Worker(OptionsOwner.Value, i)).ToArray();

    // A worker reads its options from a scheduler. This one is disposed at once: its own worker runs the (maybe mutated)
    // protocol too and must not stay parked for good; shared, so that a disposal that hangs costs one bounded wait.
    private static readonly Lazy<WorkStealingTaskScheduler> OptionsOwner = new(() =>
    {
        WorkStealingTaskScheduler owner = SchedulerTestHelpers.Create(1, spin: 0);
        SchedulerTestHelpers.DisposeBounded(owner);
        return owner;
    });

    // NotifyOne on a thread of its own while this thread holds the idle lock: true when it returned without the lock.
    private static bool NotifyOneReturnsWhileTheLockIsHeld(IdleCoordinator idle)
    {
        using (idle.LockForTests.EnterScope())
        {
            Task notify = Task.Factory.StartNew(idle.NotifyOne, CancellationToken.None, TaskCreationOptions.LongRunning, TaskScheduler.Default);
            return notify.Wait(LockProbeBound);
        }
    }

    // Runs action on a new thread with an interrupt pending while another thread holds the idle lock, releases the lock
    // once the thread waits for it (the wait has then met the interrupt), and returns whether the interrupt was pending
    // again when the action returned.
    private static bool RunWithInterruptPendingAgainstTheHeldLock(IdleCoordinator idle, Action action)
    {
        Thread? caller = null;
        bool callerWaitedOrEnded = false;
        using var held = new ManualResetEventSlim();
        var holder = new Thread(() =>
        {
            using (idle.LockForTests.EnterScope())
            {
                held.Set();
                callerWaitedOrEnded = SpinWait.SpinUntil(
                    () => Volatile.Read(ref caller) is { } c && (!c.IsAlive || (c.ThreadState & ThreadState.WaitSleepJoin) != 0),
                    SchedulerTestHelpers.Timeout);
            }
        }) { IsBackground = true };
        holder.Start();
        held.Wait(SchedulerTestHelpers.Timeout).Should().BeTrue("the holder takes the lock");

        bool pendingAfter = SchedulerTestHelpers.RunOnNewThread(() =>
        {
            Volatile.Write(ref caller, Thread.CurrentThread);
            Thread.CurrentThread.Interrupt();
            action();
            return IsInterruptPending();
        });
        holder.Join(SchedulerTestHelpers.Timeout).Should().BeTrue();
        callerWaitedOrEnded.Should().BeTrue("the caller waits for the held lock");
        return pendingAfter;
    }

    // Whether an interrupt is pending on this thread; consumes it. Thread.Sleep(0) is an interruptible wait.
    private static bool IsInterruptPending()
    {
        try
        {
            Thread.Sleep(0);
            return false;
        }
        catch (ThreadInterruptedException)
        {
            return true;
        }
    }
}
