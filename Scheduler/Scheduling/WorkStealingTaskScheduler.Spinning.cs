using System.Diagnostics;

namespace Scheduler;

// An idle worker spins (polls its queues) for ~60 µs before it parks: work that arrives meanwhile is picked up within
// a fraction of a microsecond instead of after a futex wake-up. That only pays while the worker has a CPU to itself.
// When other threads want the CPUs (another process, more runnable threads than cores), a spinning worker is a
// runnable thread the kernel preempts and then serves in turn: work that arrives for it waits for the time slice of
// whoever runs instead, milliseconds, while a parked worker would have been woken at once (the kernel favours a
// thread that slept). Thread.Yield in the spin makes it worse: it hands the CPU to the competing thread for a whole
// slice. Measured on the 2-core test machine with two busy threads of another process: a one-connection echo took
// 3.7 ms per round trip, 13× slower than System.Net.Sockets on the ThreadPool; with no spinning at all, 150 µs.
//
// So the worker watches its own spin: 64 polls take ~13 µs, and when a stretch of 64 took over half a millisecond
// the worker was not on a CPU for most of it. It then stops spinning and parks, and skips spinning for a while:
// 10 ms after an isolated preemption, doubling up to a second while preemptions keep coming (a spell that is cut
// short again less than a second after the previous one), back to 10 ms after a quiet second. A garbage collection
// that suspends the worker mid-spin looks the same; the only cost is one spell parked early.
public sealed partial class WorkStealingTaskScheduler
{
    /// <summary>How many spin spells each worker cut short because it had been preempted. For tests and diagnostics.</summary>
    internal long[] SpinsCutShortPerWorker => [.. _workers.Select(w => Volatile.Read(ref w.SpinsCutShort))];

    /// <summary>
    /// How long a worker skips spinning after a spell cut short by preemption: 10 ms after a quiet second (no such
    /// spell in the last second), else twice the previous pause, up to a second. Stopwatch units.
    /// </summary>
    internal static long NextSpinSuppression(long previous, long sinceLastPreemption) =>
        sinceLastPreemption >= Stopwatch.Frequency ? MinSpinSuppression : Math.Clamp(previous * 2, MinSpinSuppression, Stopwatch.Frequency);

    private static long MinSpinSuppression => Stopwatch.Frequency / 100;

    internal sealed partial class Worker
    {
        // The pause between two polls of an idle worker's spell (Thread.SpinWait units), and every how many polls
        // (a power of two, minus one) it checks the clock for preemption and yields the CPU.
        private const int SpinPause = 4;
        private const int CheckEvery = 63;

        // A stretch of CheckEvery + 1 polls takes ~13 µs; one that took this long was mostly off the CPU.
        private static readonly long s_preemptedStretch = Stopwatch.Frequency / 2000;

        // Until when this worker parks without spinning, the current length of that pause, and when a spell was last
        // cut short (Stopwatch timestamps and units; owner thread only).
        private long _spinSuppressedUntil;
        private long _spinSuppression;
        private long _lastPreemption = long.MinValue / 2;

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
            // 256 polls the whole spell lasts ~60 µs. (Polls 2.7 µs apart, as before, made that the typical pick-up
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
            _spinSuppression = NextSpinSuppression(_spinSuppression, now - _lastPreemption);
            _lastPreemption = now;
            _spinSuppressedUntil = now + _spinSuppression;
            Volatile.Write(ref SpinsCutShort, SpinsCutShort + 1);
        }
    }
}
