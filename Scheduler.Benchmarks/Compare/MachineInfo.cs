using System.Runtime;
using System.Runtime.InteropServices;

namespace Scheduler.Benchmarks.Compare;

/// <summary>What the numbers were measured on: printed in docs/benchmarks.md and the JSON report.</summary>
internal sealed record MachineInfo(string Cpu, int LogicalCores, string Os, string Runtime, string Gc, DateTimeOffset Date)
{
    public static MachineInfo Collect() => new(
        CpuModel(),
        Environment.ProcessorCount,
        RuntimeInformation.OSDescription,
        RuntimeInformation.FrameworkDescription,
        (GCSettings.IsServerGC ? "server" : "workstation") + (GCSettings.LatencyMode == GCLatencyMode.Interactive ? ", concurrent" : string.Empty),
        DateTimeOffset.UtcNow);

    private static string CpuModel()
    {
        const string CpuInfo = "/proc/cpuinfo";
        try
        {
            if (File.Exists(CpuInfo))
            {
                foreach (string line in File.ReadLines(CpuInfo))
                {
                    // x86 says "model name"; some ARM kernels only say "Hardware" or "Processor".
                    if (line.StartsWith("model name", StringComparison.Ordinal) || line.StartsWith("Hardware", StringComparison.Ordinal) || line.StartsWith("Processor", StringComparison.Ordinal))
                    {
                        int colon = line.IndexOf(':', StringComparison.Ordinal);
                        if (colon > 0 && colon + 1 < line.Length)
                        {
                            return line[(colon + 1)..].Trim();
                        }
                    }
                }
            }
        }
        catch (IOException)
        {
            // Not readable in this sandbox: fall through to the architecture.
        }
        catch (UnauthorizedAccessException)
        {
            // Same.
        }

        return RuntimeInformation.ProcessArchitecture.ToString();
    }
}
