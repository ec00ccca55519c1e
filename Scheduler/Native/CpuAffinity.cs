using System.Runtime.InteropServices;

namespace Scheduler.Native;

/// <summary>
/// The calling thread's CPU and CPU affinity on Linux (<c>sched_getcpu</c>, <c>sched_getaffinity</c>,
/// <c>sched_setaffinity</c>), for the workers' spreading over CPUs (WorkStealingTaskScheduler.Placement.cs).
/// Every member reports failure instead of throwing: placement is an optimisation, never a requirement.
/// </summary>
internal static unsafe partial class CpuAffinity
{
    // A cpu_set_t of 1,024 CPUs (glibc's CPU_SETSIZE); machines with more CPUs than that are simply left alone.
    private const int MaskWords = 16;
    private const int MaxCpus = MaskWords * 64;

    private static int s_unavailable; // set once a call reports that the platform refuses these calls

    /// <summary>True where the calls exist (Linux) and have not failed in a way that says they never will.</summary>
    public static bool IsSupported => OperatingSystem.IsLinux() && Volatile.Read(ref s_unavailable) == 0;

    /// <summary>The CPU the calling thread runs on at this instant, or -1.</summary>
    public static int CurrentCpu()
    {
        if (!IsSupported)
        {
            return -1;
        }

        try
        {
            return SchedGetCpu();
        }
        catch (Exception e) when (e is EntryPointNotFoundException or DllNotFoundException)
        {
            Volatile.Write(ref s_unavailable, 1);
            return -1;
        }
    }

    /// <summary>The CPUs the calling thread may run on (ascending), or an empty array when unknown.</summary>
    public static int[] AllowedCpus()
    {
        if (!IsSupported)
        {
            return [];
        }

        ulong* mask = stackalloc ulong[MaskWords];
        try
        {
            if (SchedGetAffinity(0, MaskWords * sizeof(ulong), mask) != 0)
            {
                return [];
            }
        }
        catch (Exception e) when (e is EntryPointNotFoundException or DllNotFoundException)
        {
            Volatile.Write(ref s_unavailable, 1);
            return [];
        }

        var cpus = new List<int>();
        for (int cpu = 0; cpu < MaxCpus; cpu++)
        {
            if ((mask[cpu / 64] & (1UL << (cpu % 64))) != 0)
            {
                cpus.Add(cpu);
            }
        }

        return [.. cpus];
    }

    /// <summary>
    /// Moves the calling thread to <paramref name="cpu"/> without pinning it there: narrows its affinity to that CPU
    /// (the kernel migrates it at once) and restores the affinity it had right away. The affinity is read at each move,
    /// so a narrower set given to the process or thread since (<c>taskset</c>, a container's cpuset) is kept, never
    /// widened; a CPU outside it is not moved to. False when the thread did not move.
    /// </summary>
    public static bool MoveCallingThreadTo(int cpu)
    {
        if (!IsSupported || cpu < 0 || cpu >= MaxCpus)
        {
            return false;
        }

        ulong* single = stackalloc ulong[MaskWords];
        ulong* restore = stackalloc ulong[MaskWords];
        new Span<ulong>(single, MaskWords).Clear();
        single[cpu / 64] = 1UL << (cpu % 64);
        if (SchedGetAffinity(0, MaskWords * sizeof(ulong), restore) != 0 || (restore[cpu / 64] & single[cpu / 64]) == 0)
        {
            return false;
        }

        bool moved = SchedSetAffinity(0, MaskWords * sizeof(ulong), single) == 0;

        // Never leave the thread pinned: a failed restore (which should not happen: it is the mask the thread had) is
        // retried once.
        bool restored = SchedSetAffinity(0, MaskWords * sizeof(ulong), restore) == 0
            || SchedSetAffinity(0, MaskWords * sizeof(ulong), restore) == 0;
        return moved && restored;
    }

    /// <summary>Restricts the calling thread to <paramref name="cpus"/> (what <c>taskset</c> does from outside). For tests.</summary>
    internal static bool SetCallingThreadAffinity(ReadOnlySpan<int> cpus)
    {
        ulong* mask = stackalloc ulong[MaskWords];
        new Span<ulong>(mask, MaskWords).Clear();
        foreach (int cpu in cpus)
        {
            mask[cpu / 64] |= 1UL << (cpu % 64);
        }

        return IsSupported && SchedSetAffinity(0, MaskWords * sizeof(ulong), mask) == 0;
    }

    [LibraryImport("libc", EntryPoint = "sched_getcpu")]
    private static partial int SchedGetCpu();

    [LibraryImport("libc", EntryPoint = "sched_getaffinity", SetLastError = true)]
    private static partial int SchedGetAffinity(int pid, nint size, ulong* mask);

    [LibraryImport("libc", EntryPoint = "sched_setaffinity", SetLastError = true)]
    private static partial int SchedSetAffinity(int pid, nint size, ulong* mask);
}
