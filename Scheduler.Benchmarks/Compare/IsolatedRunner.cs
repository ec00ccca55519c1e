using System.Diagnostics;
using System.Globalization;
using System.Text.Json;

namespace Scheduler.Benchmarks.Compare;

/// <summary>
/// Starts <c>compare</c> in a child process with <paramref name="arguments"/> (starting with the word <c>compare</c>),
/// hands each line the child writes to its standard error to <paramref name="onErrorLine"/>, discards its standard
/// output, and returns its exit code; kills it and throws <see cref="TimeoutException"/> after <paramref name="timeout"/>.
/// </summary>
internal delegate int ChildCompare(IReadOnlyList<string> arguments, Action<string> onErrorLine, TimeSpan timeout);

/// <summary>
/// Runs each workload of a run in a child process of its own and gathers their rows, so that no row is measured on
/// another workload's leftovers. In one process they carry over: the GC's generation-0 budget, which it tunes to the
/// survival it saw (after <c>echo_timeouts</c>, <c>timer_create_cancel</c> measured ours 31–35 ns per pair against 25
/// alone and the BCL 83–88 against 71: more frequent collections), the JIT's profile of shared methods, and the
/// threads the ThreadPool has kept. Inside a child everything is as before: warm-up, then rounds that alternate the
/// contenders in one process, so every ratio still compares both sides under the same conditions.
/// </summary>
internal sealed class IsolatedRunner(ChildCompare child, TextWriter progress, TimeSpan childTimeout)
{
    /// <summary>
    /// The rows of every workload whose child succeeded; a child that fails, crashes or times out is reported on the
    /// progress writer and listed in <paramref name="failures"/> (<c>name: reason</c>), and the others still run.
    /// </summary>
    public IReadOnlyList<CompareRow> Run(IReadOnlyList<CompareEntry> entries, bool quick, List<string> failures)
    {
        ArgumentNullException.ThrowIfNull(entries);
        ArgumentNullException.ThrowIfNull(failures);
        var rows = new List<CompareRow>();
        string directory = Directory.CreateTempSubdirectory("compare-").FullName;
        try
        {
            // A workload may have several entries (variants) under one name; its child runs them all, as --only does.
            int done = 0;
            foreach (IGrouping<string, CompareEntry> workload in entries.GroupBy(e => e.Name))
            {
                string name = workload.Key;
                string json = Path.Combine(directory, name + ".json");
                int first = done;
                string? failure = RunChild(name, child => Retag(child, first, entries.Count), json, quick, rows, out bool childSaidSo);
                done += workload.Count();
                if (failure is not null)
                {
                    if (!childSaidSo)
                    {
                        progress.WriteLine($"[{(done - first == 1 ? $"{done}" : $"{first + 1}-{done}")}/{entries.Count}] {name} FAILED: {failure}");
                    }

                    failures.Add($"{name}: {failure}");
                }
            }
        }
        finally
        {
            Directory.Delete(directory, recursive: true);
        }

        return rows;
    }

    /// <summary>
    /// Runs one workload's child; null on success (its rows added), else why it failed, and whether the child's own
    /// progress (forwarded) already said so.
    /// </summary>
    private string? RunChild(string name, Func<string, string?> forward, string json, bool quick, List<CompareRow> rows, out bool childSaidSo)
    {
        childSaidSo = false;
        List<string> arguments = ["compare", "--only", name, "--json", json, "--no-docs", "--in-process"];
        if (quick)
        {
            arguments.Add("--quick");
        }

        string? childFailure = null;
        int exitCode;
        try
        {
            exitCode = child(arguments, line =>
            {
                string? forwarded = forward(line);
                if (forwarded is not null)
                {
                    progress.WriteLine(forwarded);
                }

                if (line.StartsWith("compare: FAILED ", StringComparison.Ordinal))
                {
                    childFailure = line["compare: FAILED ".Length..];
                }
            }, childTimeout);
        }
        catch (Exception e) when (e is TimeoutException or IOException or System.ComponentModel.Win32Exception or InvalidOperationException)
        {
            return e.Message;
        }

        if (exitCode != 0)
        {
            // The child's own words when it gave them (a workload that threw), else how it ended (a crash).
            childSaidSo = childFailure is not null;
            string reason = childFailure ?? $"its process exited with code {exitCode}";
            return reason.StartsWith(name + ": ", StringComparison.Ordinal) ? reason[(name.Length + 2)..] : reason;
        }

        try
        {
            rows.AddRange(JsonReport.ReadRows(json));
            return null;
        }
        catch (Exception e) when (e is IOException or JsonException or UnauthorizedAccessException)
        {
            return $"its report could not be read: {e.Message}";
        }
    }

    /// <summary>
    /// What the parent prints of a child's progress line: a workload line with the child's tag (<c>[k/m]</c>, counting its
    /// own entries) replaced by where that entry stands in the whole run (<c>[first+k/total]</c>); nothing of the child's
    /// header, report notices or failure summary (the parent prints its own); any other line as it is.
    /// </summary>
    internal static string? Retag(string line, int first, int total)
    {
        if (line.StartsWith("compare: ", StringComparison.Ordinal))
        {
            return null;
        }

        int slash = line.IndexOf('/', StringComparison.Ordinal);
        int close = line.IndexOf(']', StringComparison.Ordinal);
        if (line.StartsWith('[') && slash > 1 && close > slash
            && int.TryParse(line.AsSpan(1, slash - 1), NumberStyles.None, CultureInfo.InvariantCulture, out int k))
        {
            return $"[{first + k}/{total}]{line[(close + 1)..]}";
        }

        return line;
    }

    /// <summary>
    /// The real <see cref="ChildCompare"/>: this benchmark assembly run again by the same <c>dotnet</c> host, with the
    /// same environment (so <c>DOTNET_*</c> settings apply to every child as to the parent).
    /// </summary>
    internal static int RunThisAssembly(IReadOnlyList<string> arguments, Action<string> onErrorLine, TimeSpan timeout)
    {
        ArgumentNullException.ThrowIfNull(arguments);
        ArgumentNullException.ThrowIfNull(onErrorLine);
        (string fileName, string? assembly) = ThisAssemblyCommand();
        var start = new ProcessStartInfo(fileName)
        {
            RedirectStandardError = true,
            RedirectStandardOutput = true,
            UseShellExecute = false,
        };
        if (assembly is not null)
        {
            start.ArgumentList.Add(assembly);
        }

        foreach (string argument in arguments)
        {
            start.ArgumentList.Add(argument);
        }

        using var process = new Process { StartInfo = start };
        process.ErrorDataReceived += (_, e) =>
        {
            if (e.Data is not null)
            {
                onErrorLine(e.Data);
            }
        };
        process.OutputDataReceived += (_, _) => { }; // the child's table: the parent prints the merged one
        process.Start();
        process.BeginErrorReadLine();
        process.BeginOutputReadLine();
        if (!process.WaitForExit(timeout))
        {
            process.Kill(entireProcessTree: true);
            process.WaitForExit();
            throw new TimeoutException($"its process did not finish within {timeout.TotalMinutes:F0} min and was killed.");
        }

        process.WaitForExit(); // drains the redirected streams
        return process.ExitCode;
    }

    /// <summary>
    /// How to start this benchmark assembly again: through the app host that runs this process (<c>dotnet run</c>
    /// starts it), or through the <c>dotnet</c> host that runs it (<c>dotnet Scheduler.Benchmarks.dll</c>), else (a test
    /// host, say) through the <c>dotnet</c> the SDK names in <c>DOTNET_HOST_PATH</c>, the one in <c>DOTNET_ROOT</c>, or the
    /// one on the PATH, with the assembly's path as the first argument.
    /// </summary>
    private static (string FileName, string? Assembly) ThisAssemblyCommand()
    {
        string assembly = typeof(IsolatedRunner).Assembly.Location;
        string? current = Environment.ProcessPath;
        if (current is not null)
        {
            string name = Path.GetFileNameWithoutExtension(current);
            if (name.Equals(Path.GetFileNameWithoutExtension(assembly), StringComparison.OrdinalIgnoreCase))
            {
                return (current, null);
            }

            if (name.Equals("dotnet", StringComparison.OrdinalIgnoreCase))
            {
                return (current, assembly);
            }
        }

        string executable = OperatingSystem.IsWindows() ? "dotnet.exe" : "dotnet";
        string? root = Environment.GetEnvironmentVariable("DOTNET_ROOT");
        string?[] candidates = [Environment.GetEnvironmentVariable("DOTNET_HOST_PATH"), string.IsNullOrEmpty(root) ? null : Path.Combine(root, executable)];
        return (candidates.FirstOrDefault(c => !string.IsNullOrEmpty(c) && File.Exists(c)) ?? "dotnet", assembly);
    }
}
