namespace Scheduler;

/// <summary>
/// The scheduler's own waits (its idle lock, a worker's park event), immune to <see cref="Thread.Interrupt"/>.
/// </summary>
/// <remarks>
/// <para>An interrupt stays pending on its thread until the thread next blocks in an interruptible wait — a contended
/// <see cref="Lock"/> or monitor, <see cref="ManualResetEventSlim.Wait()"/>, <see cref="Thread.Sleep(int)"/> — which then
/// throws <see cref="ThreadInterruptedException"/>. Left to the park/wake protocol, that tore it half-way: a task that
/// interrupted its own worker (or an interrupt aimed at a blocking call that had already returned) killed the worker
/// at its next park, silently (with one worker, every later task ran on the ThreadPool); a producer with an interrupt
/// pending that met the idle lock contended threw out of <c>StartNew</c> after queuing, its wake-up never done.</para>
/// <para>So these waits retry and report the interrupt, and the caller raises it again once its step of the protocol is
/// complete and no lock is held (<see cref="Restore"/>): it stays pending for the code it was meant for, as on the
/// ThreadPool, whose own waits are uninterruptible. One exception: a worker that parks drops it (see
/// <c>Worker.Park</c>), since the task it was meant for has finished.</para>
/// </remarks>
internal static class Uninterruptible
{
    /// <summary>Enters <paramref name="lockObject"/>; a pending interrupt met on the way sets <paramref name="interrupted"/>.</summary>
    public static Lock.Scope Enter(Lock lockObject, scoped ref bool interrupted)
    {
        while (true)
        {
            try
            {
                return lockObject.EnterScope();
            }
            catch (ThreadInterruptedException)
            {
                interrupted = true; // nothing was entered: try again
            }
        }
    }

    /// <summary>Sets <paramref name="parkEvent"/> and wakes its waiter (the pulse takes a monitor, which an interrupt can abort).</summary>
    public static void Set(ManualResetEventSlim parkEvent, scoped ref bool interrupted)
    {
        while (true)
        {
            try
            {
                parkEvent.Set();
                return;
            }
            catch (ThreadInterruptedException)
            {
                interrupted = true; // set, but maybe not pulsed: a waiter blocked in the monitor would sleep on
            }
        }
    }

    /// <summary>Waits until <paramref name="parkEvent"/> is set.</summary>
    public static void Wait(ManualResetEventSlim parkEvent, scoped ref bool interrupted)
    {
        while (true)
        {
            try
            {
                parkEvent.Wait();
                return;
            }
            catch (ThreadInterruptedException)
            {
                interrupted = true;
            }
        }
    }

    /// <summary>Raises a swallowed interrupt again on the calling thread, for its next interruptible wait.</summary>
    public static void Restore(bool interrupted)
    {
        if (interrupted)
        {
            Thread.CurrentThread.Interrupt();
        }
    }
}
