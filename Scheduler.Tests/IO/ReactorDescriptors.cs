namespace Scheduler.Tests.IO;

/// <summary>
/// The process's open sockets, epoll instances and eventfds, read from <c>/proc/self/fd</c>: what a reactor or a socket
/// can leak. Other descriptors are left out (assembly loads and the test host's files would skew a plain count).
/// </summary>
internal static class ReactorDescriptors
{
    /// <summary>Each such descriptor by fd number, with its link target (a socket is named by its inode).</summary>
    public static Dictionary<int, string> Open()
    {
        var descriptors = new Dictionary<int, string>();
        foreach (string entry in Directory.GetFiles("/proc/self/fd"))
        {
            string? target;
            try
            {
                target = new FileInfo(entry).LinkTarget;
            }
            catch (IOException)
            {
                continue; // closed meanwhile (the listing's own fd)
            }

            if (target is not null && (IsSocket(target) || IsEpollOrEventFd(target)))
            {
                descriptors[int.Parse(Path.GetFileName(entry), System.Globalization.CultureInfo.InvariantCulture)] = target;
            }
        }

        return descriptors;
    }

    /// <summary>
    /// The descriptors open now that were not open, with the same target, in <paramref name="baseline"/> (an
    /// <see cref="Open"/> taken earlier): what a piece of code opened and left open. Unlike comparing counts, this is
    /// not fooled by a descriptor someone else closed meanwhile (a finalizer of an earlier test's socket).
    /// </summary>
    public static Dictionary<int, string> OpenedSince(IReadOnlyDictionary<int, string> baseline) =>
        Open().Where(d => !baseline.TryGetValue(d.Key, out string? target) || target != d.Value).ToDictionary();

    /// <summary>How many sockets, and how many epoll instances and eventfds, are open.</summary>
    public static (int Sockets, int Epolls) Count()
    {
        int sockets = 0;
        int epolls = 0;
        foreach (string target in Open().Values)
        {
            if (IsSocket(target))
            {
                sockets++;
            }
            else
            {
                epolls++;
            }
        }

        return (sockets, epolls);
    }

    private static bool IsSocket(string target) => target.StartsWith("socket:", StringComparison.Ordinal);

    private static bool IsEpollOrEventFd(string target) => target is "anon_inode:[eventpoll]" or "anon_inode:[eventfd]";
}
