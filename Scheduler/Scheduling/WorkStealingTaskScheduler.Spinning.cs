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
// the cuts keep coming that close. (Skipping 10 ms after every cut, as before, made the busy-gap wake-latency probe
// park for hundreds of samples in a row after a single preemption by another tenant of the machine: its p99 was a
// parked wake-up, 25-40 µs, against the ThreadPool's 2-5.)
public sealed partial class WorkStealingTaskScheduler
{
    /// <summary>How many spin spells each worker cut short because it had been preempted. For tests and diagnostics.</summary>
    internal long[] SpinsCutShortPerWorker => [.. _workers.Select(w => Volatile.Read(ref w.SpinsCutShort))];

    /// <summary>
    /// How long a worker skips spinning after a spell cut short by preemption: nothing after an isolated cut, else 10 ms
    /// after the first of a run of close cuts and twice the previous pause for each further one, up to a second.
    /// Stopwatch units.
    /// </summary>
    internal static long NextSpinSuppression(long previous, bool isolated) =>
        isolated ? 0 : Math.Clamp(previous * 2, MinSpinSuppression, Stopwatch.Frequency);

    private static long MinSpinSuppression => Stopwatch.Frequency / 100;

    // A cut is isolated when the worker spun this long in all since the previous cut, or a second has passed since its pause.
    private static long IsolatedCutSpin => Stopwatch.Frequency / 50;

    internal sealed partial class Worker
    {
        // The pause between two polls of an idle worker's spell (Thread.SpinWait units), and every how many polls
        // (a power of two, minus one) it checks the clock for preemption and yields the CPU.
        private const int SpinPause = 4;
        private const int CheckEvery = 63;

        // A stretch of CheckEvery + 1 polls takes ~13 µs; one that took this long was mostly off the CPU.
        private static readonly long s_preemptedStretch = Stopwatch.Frequency / 2000;

        // Until when this worker parks without spinning (the moment of the last cut when that one was isolated) and the
        // current length of that pause (Stopwatch timestamp and units; owner thread only).
        private long _spinSuppressedUntil;
        private long _spinSuppression;

        // Time spent spinning (whole stretches that were not cut) since the last cut, in Stopwatch units.
        private long _spinSinceCut = long.MaxValue / 2;

        /// <summary>Spin spells this worker cut short because it had been preempted.</summary>
        internal long SpinsCutShort;

        private bool TrySpinForWork(out WorkItem item)
        {
            item = default;
            if (_spinIterations == 0)
            {
                return false;
            }

            long stretchStart = Stopwatch.GetTimestamp();
            if (stretchStart < _spinSuppressedUntil)
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
                    long now = Stopwatch.GetTimestamp();
                    if (now - stretchStart > s_preemptedStretch)
                    {
                        OnPreemptedWhileSpinning(now);
                        break;
                    }

                    // The stretch includes the yield: a yield that let another thread run for long is caught next time.
                    // None at the end of the spell, which parks next.
                    _spinSinceCut += now - stretchStart;
                    stretchStart = now;
                    if (i + 1 < _spinIterations)
                    {
                        Thread.Yield();
                    }
                }
            }

            return false;
        }

        private void OnPreemptedWhileSpinning(long now)
        {
            // A second counts from the end of the previous pause: one of a second must not make the next cut look isolated.
            bool isolated = _spinSinceCut >= IsolatedCutSpin || now - _spinSuppressedUntil >= Stopwatch.Frequency;
            _spinSuppression = NextSpinSuppression(_spinSuppression, isolated);
            _spinSinceCut = 0;
            _spinSuppressedUntil = now + _spinSuppression;
            Volatile.Write(ref SpinsCutShort, SpinsCutShort + 1);
        }
    }
}
