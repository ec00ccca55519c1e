using System.Globalization;
using System.Runtime.ExceptionServices;
using Scheduler.Native;
using Scheduler.Tests.Scheduling;

namespace Scheduler.Tests.Native;

/// <summary>
/// The affinity calls behind the workers' placement, checked against the kernel's own account of the thread
/// (<c>/proc/thread-self/status</c>). The placement tests skip where these calls report nothing, so without these a
/// wrapper that reported nothing on Linux (no CPUs, unsupported, every move refused) passed every test.
/// </summary>
/// <remarks>Each test changes affinity only on a thread of its own, which ends with the test.</remarks>
[Collection(SerialResourceGroup.Name)]
public sealed class CpuAffinityTests
{
    [Fact]
    public void On_Linux_the_calls_are_supported_and_the_current_cpu_is_an_allowed_one()
    {
        CpuAffinity.IsSupported.Should().Be(OperatingSystem.IsLinux());
        if (!OperatingSystem.IsLinux())
        {
            CpuAffinity.CurrentCpu().Should().Be(-1);
            CpuAffinity.AllowedCpus().Should().BeEmpty();
            return;
        }

        OnOwnThread(() =>
        {
            int[] allowed = CpuAffinity.AllowedCpus();
            allowed.Should().Equal(KernelsAllowedCpus(), "the mask read back must be the kernel's, bit for bit");
            allowed.Should().BeInAscendingOrder().And.OnlyHaveUniqueItems();
            allowed.Should().Contain(CpuAffinity.CurrentCpu());
        });
    }

    [Fact]
    public void Restricting_the_thread_to_each_allowed_cpu_keeps_it_there_and_reads_back()
    {
        OnOwnLinuxThread(allowed =>
        {
            foreach (int cpu in allowed)
            {
                CpuAffinity.SetCallingThreadAffinity([cpu]).Should().BeTrue();
                CpuAffinity.AllowedCpus().Should().Equal([cpu]);
                KernelsAllowedCpus().Should().Equal([cpu]);
                CpuAffinity.CurrentCpu().Should().Be(cpu, "a thread restricted to one CPU runs on it");
            }

            // A set of several (given twice, and out of order) is the set.
            CpuAffinity.SetCallingThreadAffinity([.. allowed.Reverse(), .. allowed]).Should().BeTrue();
            CpuAffinity.AllowedCpus().Should().Equal(allowed);
        });
    }

    [Fact]
    public void Moving_the_thread_to_an_allowed_cpu_takes_it_there_without_pinning_it()
    {
        OnOwnLinuxThread(allowed =>
        {
            foreach (int cpu in allowed)
            {
                // The move itself is exact; where the thread is a moment later is the kernel's choice, so a few tries
                // must see it there at least once (under load the balancer may move it on at once).
                bool seenThere = false;
                for (int attempt = 0; attempt < 50 && !seenThere; attempt++)
                {
                    CpuAffinity.MoveCallingThreadTo(cpu).Should().BeTrue($"CPU {cpu} is allowed");
                    seenThere = CpuAffinity.CurrentCpu() == cpu;
                }

                seenThere.Should().BeTrue($"a move to CPU {cpu} takes the thread there");
                CpuAffinity.AllowedCpus().Should().Equal(allowed, "the move restores the affinity the thread had");
                KernelsAllowedCpus().Should().Equal(allowed);
            }
        });
    }

    [Fact]
    public void A_move_outside_the_threads_affinity_or_the_mask_is_refused_and_changes_nothing()
    {
        OnOwnLinuxThread(allowed =>
        {
            foreach (int cpu in new[] { -1, -64, 1024, 1088, int.MaxValue, int.MinValue })
            {
                CpuAffinity.MoveCallingThreadTo(cpu).Should().BeFalse($"{cpu} is not a CPU of the 1,024-bit mask");
                CpuAffinity.AllowedCpus().Should().Equal(allowed);
            }

            int notAllowed = Enumerable.Range(0, 1024).First(cpu => !allowed.Contains(cpu));
            CpuAffinity.MoveCallingThreadTo(notAllowed).Should().BeFalse("a CPU outside the affinity is never moved to");
            CpuAffinity.AllowedCpus().Should().Equal(allowed);

            if (allowed.Length >= 2)
            {
                // A narrower affinity set since (taskset, a cpuset) is kept: the other CPU is now outside it.
                CpuAffinity.SetCallingThreadAffinity([allowed[0]]).Should().BeTrue();
                CpuAffinity.MoveCallingThreadTo(allowed[1]).Should().BeFalse();
                CpuAffinity.AllowedCpus().Should().Equal([allowed[0]], "a refused move never widens the affinity");
                CpuAffinity.CurrentCpu().Should().Be(allowed[0]);
            }
        });
    }

    /// <summary>On Linux, runs <paramref name="body"/> with the CPUs allowed at its start on a thread of its own; elsewhere nothing.</summary>
    private static void OnOwnLinuxThread(Action<int[]> body)
    {
        if (OperatingSystem.IsLinux())
        {
            OnOwnThread(() => body(CpuAffinity.AllowedCpus()));
        }
    }

    /// <summary>Runs <paramref name="body"/> on a new thread (its affinity dies with it) and rethrows its failure.</summary>
    private static void OnOwnThread(Action body)
    {
        Exception? failure = null;
        var thread = new Thread(() =>
        {
            try
            {
                body();
            }
            catch (Exception e)
            {
                failure = e;
            }
        });
        thread.Start();
        thread.Join(TimeSpan.FromSeconds(30)).Should().BeTrue("the affinity calls return at once");
        if (failure is not null)
        {
            ExceptionDispatchInfo.Throw(failure);
        }
    }

    /// <summary>The calling thread's <c>Cpus_allowed_list</c> ("0-3,8,10-11"), expanded.</summary>
    private static int[] KernelsAllowedCpus()
    {
        string line = File.ReadLines("/proc/thread-self/status").Single(l => l.StartsWith("Cpus_allowed_list:", StringComparison.Ordinal));
        var cpus = new List<int>();
        foreach (string range in line["Cpus_allowed_list:".Length..].Trim().Split(','))
        {
            string[] ends = range.Split('-');
            int first = int.Parse(ends[0], CultureInfo.InvariantCulture);
            int last = ends.Length == 2 ? int.Parse(ends[1], CultureInfo.InvariantCulture) : first;
            cpus.AddRange(Enumerable.Range(first, last - first + 1));
        }

        return [.. cpus];
    }
}
