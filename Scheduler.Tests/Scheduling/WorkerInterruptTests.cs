namespace Scheduler.Tests.Scheduling;

/// <summary>
/// <see cref="Thread.Interrupt"/> makes a thread's next interruptible wait throw. The scheduler's own waits (a worker's
/// park, the idle lock) must not: a producer keeps its interrupt for the code it was meant for, and a worker that parks
/// drops one that its finished task left pending.
/// </summary>
public sealed class WorkerInterruptTests
{
    [Fact]
    public async Task A_task_that_interrupts_its_own_worker_does_not_end_the_worker()
    {
        var scheduler = SchedulerTestHelpers.Create(1, spin: 0);
        await using var disposeScheduler = SchedulerTestHelpers.DisposeWithin(scheduler);
        Thread? worker = null;
        await scheduler.Factory.StartNew(() =>
        {
            worker = Thread.CurrentThread;
            worker.Interrupt(); // pending: nothing in this task blocks afterwards
        }).WithTimeout();

        // The worker parks next; the pending interrupt used to throw out of its wait and end it. Blocked in the wait
        // (WaitSleepJoin), it has met the interrupt.
        await SchedulerTestHelpers.WaitUntilAsync(() =>
            (scheduler.IsWorkerParked(0) && (worker!.ThreadState & ThreadState.WaitSleepJoin) != 0) || !worker!.IsAlive);
        worker!.IsAlive.Should().BeTrue("the worker must survive an interrupt met while parking");

        Thread ranOn = await scheduler.Factory.StartNew(() => Thread.CurrentThread).WithTimeout();
        ranOn.Should().BeSameAs(worker, "later tasks still run on the worker, not on the ThreadPool");

        // The task the interrupt was meant for has finished: a later one that blocks is not interrupted by it.
        bool interrupted = await scheduler.Factory.StartNew(() =>
        {
            try
            {
                Thread.Sleep(1);
                return false;
            }
            catch (ThreadInterruptedException)
            {
                return true;
            }
        }).WithTimeout();
        interrupted.Should().BeFalse("a worker drops an interrupt still pending when it parks");
    }

    [Fact]
    public async Task Interrupting_a_parked_worker_from_outside_does_not_end_it()
    {
        var scheduler = SchedulerTestHelpers.Create(2, spin: 0);
        await using var disposeScheduler = SchedulerTestHelpers.DisposeWithin(scheduler);
        Thread worker = await scheduler.Factory.StartNew(() => Thread.CurrentThread).WithTimeout();
        int index = worker.Name!.EndsWith("#0", StringComparison.Ordinal) ? 0 : 1;
        await SchedulerTestHelpers.WaitUntilAsync(() => scheduler.IsWorkerParked(index));

        worker.Interrupt();
        // Nothing signals "survived": give a dying worker (microseconds) ample time to end.
        worker.Join(TimeSpan.FromMilliseconds(200)).Should().BeFalse("the worker must survive an interrupt while parked");

        var ran = new TaskCompletionSource<Thread>(TaskCreationOptions.RunContinuationsAsynchronously);
        scheduler.EnqueueToWorker(index, new SchedulerTestHelpers.RecordingWorkItem(() => ran.TrySetResult(Thread.CurrentThread)));
        (await ran.Task.WithTimeout()).Should().BeSameAs(worker, "work targeted at the worker still reaches it");
    }

    [Fact]
    public async Task A_producer_with_an_interrupt_pending_queues_and_wakes_without_throwing_and_keeps_its_interrupt()
    {
        var scheduler = SchedulerTestHelpers.Create(2, spin: 0);
        await using var disposeScheduler = SchedulerTestHelpers.DisposeWithin(scheduler);
        await SchedulerTestHelpers.WaitUntilAsync(() => scheduler.IsWorkerParked(0) && scheduler.IsWorkerParked(1));

        // Another thread holds the idle lock, so the producer's wake-up meets it contended: an interruptible wait.
        using var held = new ManualResetEventSlim();
        using var release = new ManualResetEventSlim();
        var holder = new Thread(() =>
        {
            using (scheduler.IdleLockForTests.EnterScope())
            {
                held.Set();
                release.Wait();
            }
        });
        holder.Start();
        held.Wait();

        Task<int>? task = null;
        Exception? thrown = null;
        bool keptInterrupt = false;
        var producer = new Thread(() =>
        {
            Thread.CurrentThread.Interrupt();
            try
            {
                task = scheduler.Factory.StartNew(() => 42);
            }
            catch (Exception e)
            {
                thrown = e;
            }

            try
            {
                Thread.Sleep(0);
            }
            catch (ThreadInterruptedException)
            {
                keptInterrupt = true;
            }
        });
        producer.Start();

        // Release the lock once the producer waits for it (or has already failed).
        var deadline = DateTime.UtcNow + SchedulerTestHelpers.Timeout;
        while (producer.IsAlive && (producer.ThreadState & ThreadState.WaitSleepJoin) == 0 && DateTime.UtcNow < deadline)
        {
            Thread.Yield();
        }

        release.Set();
        producer.Join();
        holder.Join();

        thrown.Should().BeNull("queuing must not fail half-way because the producer has an interrupt pending");
        (await task!.WithTimeout()).Should().Be(42);
        keptInterrupt.Should().BeTrue("the scheduler must not swallow the producer's interrupt");
    }
}
