namespace Scheduler.Timers;

/// <summary>
/// The pool of <see cref="DelayEntry"/> objects: one cached entry per thread (an awaiter usually resumes on the
/// thread that starts its next delay, so the common loop never leaves it) backed by a small shared stack.
/// Bounded: at most <see cref="SharedCapacity"/> entries plus one per thread stay alive after a burst.
/// </summary>
internal static class DelayEntryPool
{
    internal const int SharedCapacity = 1024;

    [ThreadStatic]
    private static DelayEntry? t_cached;

    private static readonly DelayEntry?[] s_shared = new DelayEntry?[SharedCapacity];
    private static readonly Lock s_lock = new();
    private static int s_count;

    public static DelayEntry? Rent()
    {
        DelayEntry? entry = t_cached;
        if (entry is not null)
        {
            t_cached = null;
            return entry;
        }

        if (Volatile.Read(ref s_count) == 0)
        {
            return null;
        }

        lock (s_lock)
        {
            if (s_count == 0)
            {
                return null;
            }

            entry = s_shared[--s_count];
            s_shared[s_count] = null;
            return entry;
        }
    }

    public static void Return(DelayEntry entry)
    {
        if (t_cached is null)
        {
            t_cached = entry;
            return;
        }

        lock (s_lock)
        {
            if (s_count < SharedCapacity)
            {
                s_shared[s_count++] = entry;
            }
        }
    }

    /// <summary>Entries held by the shared stack (not counting per-thread caches). For tests.</summary>
    internal static int SharedCount => Volatile.Read(ref s_count);
}
