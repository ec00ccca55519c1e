using System.Runtime.InteropServices;

namespace Scheduler.Native;

/// <summary>
/// Owns a file descriptor. Every system call on it holds a reference (<see cref="SafeHandle.DangerousAddRef"/>),
/// and <c>close</c> runs only after the last one is released: a syscall racing with disposal can never act on a
/// different socket that reused the fd number.
/// </summary>
internal sealed class SafeFileDescriptor : SafeHandle
{
    public SafeFileDescriptor(int fd)
        : base(invalidHandleValue: -1, ownsHandle: true)
    {
        SetHandle(fd);
    }

    public override bool IsInvalid => handle == -1;

    /// <summary>The raw fd; only valid while a reference is held.</summary>
    public int Fd => (int)handle;

    protected override bool ReleaseHandle() => Libc.Close((int)handle) == 0;
}
