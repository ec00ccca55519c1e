using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace Scheduler.Native;

/// <summary>
/// For tests only: makes a named system call fail as if the kernel had refused it, so that the cleanup on failure paths
/// (what an fd opened a step earlier becomes) can be tested. The kernel refuses most of these calls only when it runs
/// out of memory or descriptors, which a test cannot arrange without starving the whole process.
/// </summary>
internal static class FaultInjection
{
    /// <summary>
    /// For tests only (null otherwise): asked before each call named below; a non-zero answer is an errno that the call
    /// then fails with, without being made. Process-wide: a test that sets it filters by thread (most calls run
    /// synchronously on the thread that creates the reactor or socket; the points asked elsewhere say where) and runs in
    /// a collection of its own.
    /// Names: <c>"epoll_create1"</c>, <c>"eventfd"</c>, <c>"epoll_ctl"</c> (every registration, the eventfd's too),
    /// <c>"epoll_wait"</c> (every wait of the reactor's loop, whichever call it makes; asked on the reactor's thread),
    /// <c>"epoll_pwait2"</c> (only the nanosecond wait, before the millisecond fallback), <c>"listen"</c>,
    /// <c>"setsockopt"</c> (the options a listener or a stream socket sets), <c>"connect"</c> (every try of a connect,
    /// those of a Unix domain connect waiting for backlog room too, which are asked on the thread that resumes it after
    /// a pause), and three that fail with
    /// <see cref="OutOfMemoryException"/>: <c>"pthread_create"</c> (the reactor's thread, as .NET reports a refused
    /// thread), <c>"SafeFileDescriptor"</c> (the allocation of the handle that owns an fd) and <c>"registration-table"</c>
    /// (the growth of the reactor's table of sockets). The scheduler's queues, all failing with
    /// <see cref="OutOfMemoryException"/> where an allocation could (see <c>docs/scheduling.md</c>, "When an allocation
    /// fails"): <c>"global-enqueue"</c> (every enqueue to the global queue, batches included; asked on the enqueuing
    /// thread), <c>"batch-enqueue"</c> (an overflow batch or a batch's remainder going to the global queue),
    /// <c>"batch-rent"</c> (a new overflow batch), <c>"inbox-enqueue"</c> (a worker's inbox) and
    /// <c>"threadpool-drain"</c> (handing an item to the ThreadPool after the workers exited), and
    /// <c>"compensation-thread"</c> (starting a compensation thread; asked on the watchdog's thread). The queues' points are
    /// asked on cold paths and on the outside producer's enqueue, never on a worker's local push.
    /// </summary>
    internal static Func<string, int>? HookForTests { get; set; }

    /// <summary>
    /// True when the test hook fails <paramref name="call"/>; the injected errno is then the last P/Invoke error, as
    /// after a real failure. In production one static read and a null check.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static bool Fails(string call) => HookForTests is { } hook && Inject(hook, call);

    /// <summary>
    /// For a point that fails with <see cref="OutOfMemoryException"/>: throws it when the hook fails <paramref name="call"/>
    /// (what the runtime throws when the allocation itself fails, or, for <c>"pthread_create"</c>, when the OS refuses a thread).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static void ThrowIfOutOfMemoryInjected(string call)
    {
        if (Fails(call))
        {
            ThrowOutOfMemory(call);
        }
    }

    [System.Diagnostics.CodeAnalysis.DoesNotReturn]
    [MethodImpl(MethodImplOptions.NoInlining)]
    private static void ThrowOutOfMemory(string call) =>
#pragma warning disable CA2201 // What the runtime throws when the allocation itself fails.
        throw new OutOfMemoryException($"Injected by a test: {call}.");
#pragma warning restore CA2201

    private static bool Inject(Func<string, int> hook, string call)
    {
        int errno = hook(call);
        if (errno == 0)
        {
            return false;
        }

        Marshal.SetLastPInvokeError(errno);
        return true;
    }
}
