using Scheduler.Native;

namespace Scheduler;

// Keeping workers on different CPUs (Linux). The kernel places a thread that wakes up next to the thread that woke it
// when it sees no idle CPU at that instant, and it does not pull it away again while the other CPU goes idle for only
// microseconds at a time (an I/O reactor that wakes for every readiness edge). Two workers then take turns on one CPU
// in time slices of milliseconds while the other CPU idles: `perf sched` of the echo benchmark (256 connections, 2
// CPUs) showed both workers on one CPU for stretches with the reactor alone on the other, and a worker waiting up to
// 8 ms for its turn — the p99 tail. Pinning each worker to its own CPU took the p99 from 5.4-6.8 ms to 4.2-4.9 ms in
// alternating runs, but it would keep a worker on a CPU that another process hogs. So each worker has a preferred CPU
// (handed out round robin over the process's allowed CPUs, so that several schedulers spread too; only in a scheduler
// with at least one worker per allowed CPU, the default) and, at a fairness turn after a busy stretch, moves back to
// it when it finds itself elsewhere: its affinity is narrowed to that CPU (the kernel migrates it at once) and
// restored right away, so the kernel stays free to move it again. If the kernel keeps moving it away (the CPU is
// contended), the worker backs off, doubling the pause up to a second each time.
public sealed partial class WorkStealingTaskScheduler
{
    // The next preferred CPU to hand out, process-wide (an index into the allowed CPUs).
    private static int s_nextPreferredCpu;

    /// <summary>How many times each worker moved itself back to its preferred CPU. For tests and diagnostics.</summary>
    internal long[] CpuMovesPerWorker => [.. _workers.Select(w => Volatile.Read(ref w.CpuMoves))];

    /// <summary>Each worker's preferred CPU (-1 where placement is off). For tests.</summary>
    internal int[] PreferredCpus => [.. _workers.Select(w => Volatile.Read(ref w.PreferredCpu))];

    /// <summary>
    /// Hands every worker its preferred CPU, before the workers start. One block of consecutive CPUs per scheduler,
    /// reserved in a single step: workers of schedulers created at the same time on other threads cannot interleave
    /// with ours and leave two of our workers on one CPU. The workers inherit this thread's affinity, so the CPUs read
    /// here are theirs.
    /// </summary>
    private void AssignPreferredCpus()
    {
        if (!_options.SpreadOverCpus || _workers.Length < 2 || !CpuAffinity.IsSupported)
        {
            return;
        }

        // Only for one worker per CPU or more (the default): a smaller scheduler on a big machine is better off
        // where the kernel puts it than held to CPUs that other processes may be using.
        int[] allowed = CpuAffinity.AllowedCpus();
        if (allowed.Length < 2 || _workers.Length < allowed.Length)
        {
            return;
        }

        uint first = (uint)Interlocked.Add(ref s_nextPreferredCpu, _workers.Length) - (uint)_workers.Length;
        foreach (Worker worker in _workers)
        {
            worker.PreferredCpu = allowed[(int)((first + (uint)worker.Index) % (uint)allowed.Length)];
        }
    }

    /// <summary>
    /// The pause before a worker that just moved back to its preferred CPU may move again: none after a quiet spell
    /// (no move in the last second), else twice the previous pause, from 1 ms up to 1 s.
    /// </summary>
    internal static long NextPlacementBackoff(long previousBackoffMs, long sinceLastMoveMs) =>
        sinceLastMoveMs >= 1000 ? 0 : Math.Clamp(previousBackoffMs * 2, 1, 1000);

    internal sealed partial class Worker
    {
        // The CPU this worker returns to, or -1 when placement is off (not Linux, one CPU, fewer workers than CPUs, or
        // disabled).
        internal int PreferredCpu = -1;
        private long _lastMoveMs = long.MinValue / 2;
        private long _placementBackoffMs;

        // Whether this worker went idle since its previous busy fairness turn.
        private bool _idleSinceLastTurn = true;

        /// <summary>How many times this worker moved itself back to its preferred CPU.</summary>
        internal long CpuMoves;

        /// <summary>The worker ran out of work: the next busy fairness turn starts a new busy stretch.</summary>
        private void NoteIdle() => _idleSinceLastTurn = true;

        /// <summary>
        /// At a fairness turn of a busy worker: back to the preferred CPU if the kernel placed it elsewhere — but only
        /// after a busy stretch (no idle spell since the previous turn: see <see cref="NoteIdle"/>). A worker that runs
        /// an item now and then gains nothing from a move, and is briefly off the CPUs while it migrates.
        /// </summary>
        private void OnBusyFairnessTurn()
        {
            int preferred = PreferredCpu;
            bool busyStretch = !_idleSinceLastTurn;
            _idleSinceLastTurn = false;
            if (preferred < 0 || !busyStretch)
            {
                return;
            }

            long now = Environment.TickCount64;
            if (now < _lastMoveMs + _placementBackoffMs)
            {
                return;
            }

            int cpu = CpuAffinity.CurrentCpu();
            if (cpu < 0 || cpu == preferred)
            {
                return;
            }

            _placementBackoffMs = NextPlacementBackoff(_placementBackoffMs, now - _lastMoveMs);
            _lastMoveMs = now;
            if (CpuAffinity.MoveCallingThreadTo(preferred))
            {
                CpuMoves++;
            }
        }
    }
}
