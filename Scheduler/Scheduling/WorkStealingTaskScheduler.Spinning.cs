using System.Diagnostics;

namespace Scheduler;

// An idle worker spins (polls its queues) for ~100-120 µs before it parks: work that arrives meanwhile is picked up
// within a fraction of a microsecond instead of after a futex wake-up (the ThreadPool spins 200-300 µs; a spell of
// ~60 µs, as before, parked for a tenth of the busy-gap probe's completions, 0-50 µs after the await: see
// docs/scheduling.md). That only pays while the worker has a CPU to itself.
// When other threads want the CPUs (another process, more runnable threads than cores), a spinning worker is a
// runnable thread the kernel preempts and then serves in turn: work that arrives for it waits for the time slice of
// whoever runs instead, milliseconds, while a parked worker would have been woken at once (the kernel favours a
// thread that slept). Thread.Yield in the spin makes it worse: it hands the CPU to the competing thread for a whole
// slice. Measured on the 2-core test machine with two busy threads of another process: a one-connection echo took
// 3.7 ms per round trip, 13× slower than System.Net.Sockets on the ThreadPool; with no spinning at all, 150 µs.
//
// So the worker watches its own spin: 64 polls take ~13 µs, and when a stretch of 64 took over half a millisecond
// the worker was not on a CPU for most of it. It then stops spinning and parks. One such preemption says little: on a
// shared machine another process's thread, an interrupt or a garbage collection takes a CPU now and then. Contention
// is when they keep coming: a spell cut short again before the worker has spun 20 ms in all (or within a second)
// since the previous one. Only then does the worker skip spinning for a while: 10 ms, doubling up to a second while
// the cuts keep coming that close (SpinBackOff keeps that record). (Skipping 10 ms after every cut, as before, made the
// busy-gap wake-latency probe park for hundreds of samples in a row after a single preemption by another tenant of the
// machine: its p99 was a parked wake-up, 25-40 µs, against the ThreadPool's 2-5.)
public sealed partial class WorkStealingTaskScheduler
{
    /// <summary>How many spin spells each worker cut short because it had been preempted. For tests and diagnostics.</summary>
    internal long[] SpinsCutShortPerWorker => [.. _workers.Select(w => Volatile.Read(ref w.SpinsCutShort))];

    /// <summary>
    /// For tests, on one of this scheduler's workers: records a cut of that worker's spell at <paramref name="now"/> (a
    /// Stopwatch timestamp), as if preemption had cut it; <see cref="SpinsCutShortPerWorker"/> is left alone.
    /// </summary>
    /// <exception cref="InvalidOperationException">The caller is not one of this scheduler's workers.</exception>
    internal void RecordSpinCutOnCurrentWorkerForTests(long now)
    {
        Worker worker = t_currentWorker is { } current && current.Owner == this
            ? current
            : throw new InvalidOperationException("Only one of this scheduler's workers can record a cut of its own spell.");
        worker.RecordSpinCutForTests(now);
    }

    internal sealed partial class Worker
    {
        // The pause between two polls of an idle worker's spell (Thread.SpinWait units), and every how many polls
        // (a power of two, minus one) it checks the clock for preemption and yields the CPU.
        private const int SpinPause = 4;
        private const int CheckEvery = 63;

        // Owner thread only.
        private SpinBackOff _spinBackOff = new();

        /// <summary>Spin spells this worker cut short because it had been preempted.</summary>
        internal long SpinsCutShort;

        internal void RecordSpinCutForTests(long now) => _ = _spinBackOff.TryCutStretch(now - SpinBackOff.PreemptedStretch - 1, now);

        private bool TrySpinForWork(out WorkItem item)
        {
            item = default;
            if (_spinIterations == 0)
            {
                return false;
            }

            long stretchStart = Stopwatch.GetTimestamp();
            if (_spinBackOff.IsSuppressed(stretchStart))
            {
                return false;
            }

            // Poll every queue with a short pause in between (Thread.SpinWait(4): ~0.2 µs on the 2-core test machine),
            // so work that arrives while we spin is picked up within a fraction of a microsecond; with the default
            // 512 polls the whole spell lasts ~100-120 µs. (Polls 2.7 µs apart, as before, made that the typical pick-up
            // delay: the ThreadPool's spinning workers answered in 0.5 µs.) Now and then the CPU is yielded: a thread
            // that shares this core (the one that will produce our next work, often) runs.
            for (int i = 0; i < _spinIterations; i++)
            {
                if (_owner.IsDisposeRequested)
                {
                    break;
                }

                Thread.SpinWait(SpinPause);
                if (TryGetWork(out item))
                {
                    return true;
                }

                if ((i & CheckEvery) == CheckEvery)
                {
                    // The stretch includes the yield: a yield that let another thread run for long is caught next time.
                    long now = Stopwatch.GetTimestamp();
                    if (_spinBackOff.TryCutStretch(stretchStart, now))
                    {
                        Volatile.Write(ref SpinsCutShort, SpinsCutShort + 1);
                        break;
                    }

                    // None at the end of the spell, which parks next.
                    stretchStart = now;
                    if (i + 1 < _spinIterations)
                    {
                        Thread.Yield();
                    }
                }
            }

            return false;
        }
    }
}
