using System.Runtime.InteropServices;

namespace Scheduler.Native;

/// <summary>
/// Owns a file descriptor. Every system call on it holds a reference (<see cref="SafeHandle.DangerousAddRef"/>),
/// and <c>close</c> runs only after the last one is released: a syscall racing with disposal can never act on a
/// different socket that reused the fd number.
/// </summary>
internal sealed class SafeFileDescriptor : SafeHandle
{
    /// <summary>
    /// A handle that owns nothing yet: allocate it before the system call that opens the fd, then
    /// <see cref="SetFd"/>. Allocated after it, an allocation failure (out of memory) would leave the fd with no owner.
    /// </summary>
    public SafeFileDescriptor()
        : base(invalidHandleValue: -1, ownsHandle: true)
    {
        ThrowIfAllocationFails();
    }

    /// <summary>Takes ownership of an fd that is already open; the caller closes <paramref name="fd"/> if this throws.</summary>
    public SafeFileDescriptor(int fd)
        : this()
    {
        SetHandle(fd);
    }

    public override bool IsInvalid => handle == -1;

    /// <summary>The raw fd; only valid while a reference is held.</summary>
    public int Fd => (int)handle;

    /// <summary>Gives this handle (created empty) the fd it is to own; cannot fail.</summary>
    public void SetFd(int fd) => SetHandle(fd);

    protected override bool ReleaseHandle() => Libc.Close((int)handle) == 0;

    /// <summary>A test's injected failure of this handle's allocation (see <see cref="FaultInjection"/>), before it owns anything.</summary>
    private static void ThrowIfAllocationFails()
    {
        FaultInjection.ThrowIfOutOfMemoryInjected("SafeFileDescriptor");
    }
}
