using System.Runtime.InteropServices;

namespace Scheduler.Tests.IO;

/// <summary>Sends a signal to one thread of this process (Linux).</summary>
internal static partial class Signals
{
    public const int SIGCHLD = 17;

    public static bool Send(int threadId, int signal) => TgKill(Environment.ProcessId, threadId, signal) == 0;

    [LibraryImport("libc", EntryPoint = "tgkill", SetLastError = true)]
    private static partial int TgKill(int processId, int threadId, int signal);
}
