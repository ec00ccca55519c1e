using System.Net.Sockets;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using Scheduler.Native;
using static Scheduler.Native.LinuxConstants;

namespace Scheduler.IO;

/// <summary>Linux epoll backend: one epoll instance plus an eventfd registered for wake-ups.</summary>
internal sealed unsafe class EpollBackend : IReactorBackend
{
    /// <summary>Token of the eventfd; registration tokens never use it (generation 0xFFFFFFFF is skipped).</summary>
    internal const ulong WakeToken = ulong.MaxValue;

    // EPOLLPRI only to learn of urgent data: a receive stops short at the urgent mark with data still queued, so
    // after urgent data a short read must not be taken as proof that the socket is drained.
    private const uint SocketEvents = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLPRI | EPOLLET;
    private const int MaxEvents = 256;

    // struct epoll_event is packed (12 bytes) on x86/x86-64 and naturally aligned (16 bytes) elsewhere.
    private static readonly int s_eventSize =
        RuntimeInformation.ProcessArchitecture is Architecture.X64 or Architecture.X86 ? 12 : 16;
    private static readonly int s_dataOffset = s_eventSize == 12 ? 4 : 8;

    // Whether epoll_pwait2 (nanosecond timeouts) is usable; cleared for good the first time it is missing. Without
    // it, timeouts round up to whole milliseconds with epoll_wait. Per backend: a sandbox's seccomp filter belongs to
    // the threads it was installed on, so one reactor's thread may be refused the call while another's is not.
    private bool _hasPWait2 = Environment.Is64BitProcess;

    private readonly int _epollFd;
    private readonly int _wakeFd;

    // The eventfd again, for Wake: any thread may call it, also while or after the reactor disposes the backend, and
    // a write must never reach another file that reused the fd number (see SafeFileDescriptor). It owns the fd.
    private readonly SafeFileDescriptor _wakeHandle;
    private readonly byte* _events;
    private int _disposed;

    /// <exception cref="SocketException">epoll_create1, eventfd or registering the eventfd failed; nothing stays open.</exception>
    public EpollBackend()
    {
        _epollFd = FaultInjection.Fails("epoll_create1") ? -1 : Libc.EpollCreate1(EPOLL_CLOEXEC);
        if (_epollFd < 0)
        {
            Errno.ThrowLast("epoll_create1");
        }

        // From here on every failure closes what is open: a constructor that throws leaves nobody to call Dispose,
        // and the epoll fd is a plain int that no finalizer would ever close.
        _wakeFd = -1;
        try
        {
            _wakeFd = FaultInjection.Fails("eventfd") ? -1 : Libc.EventFd(0, EFD_CLOEXEC | EFD_NONBLOCK);
            if (_wakeFd < 0)
            {
                Errno.ThrowLast("eventfd");
            }

            _wakeHandle = new SafeFileDescriptor(_wakeFd);
            _events = (byte*)NativeMemory.AllocZeroed((nuint)(MaxEvents * s_eventSize));
            Ctl(EPOLL_CTL_ADD, _wakeFd, EPOLLIN | EPOLLET, WakeToken);
        }
        catch
        {
            CloseAfterFailedConstruction();
            throw;
        }
    }

    public void Register(int fd, ulong token) => Ctl(EPOLL_CTL_ADD, fd, SocketEvents, token);

    // EPOLL_CTL_MOD polls the fd and queues an event when it is ready, also edge-triggered. On a registered fd it fails
    // only with ENOENT, once the socket has been unregistered (its disposal finishes its operations): ignored.
    public void Rearm(int fd, ulong token) => _ = CtlOnce(EPOLL_CTL_MOD, fd, SocketEvents, token);

    public void Unregister(int fd)
    {
        byte* ev = stackalloc byte[16];
        _ = Libc.EpollCtl(_epollFd, EPOLL_CTL_DEL, fd, ev);
    }

    public int Wait(Span<ReadinessEvent> events, long timeoutNanoseconds)
    {
        int max = Math.Min(events.Length, MaxEvents);
        int count = FaultInjection.Fails("epoll_wait") ? -1 : WaitOnce(max, timeoutNanoseconds);
        if (count < 0)
        {
            if (Errno.Last == EINTR)
            {
                // A signal handler ran on this thread (SIGCHLD, say, in a process that starts children). Waiting the
                // whole timeout again would make the wheel's next timer late by the time already waited: return no
                // events, and the caller recomputes the timeout from its clock before it waits again.
                return 0;
            }

            Errno.ThrowLast("epoll_wait");
        }

        int written = 0;
        for (int i = 0; i < count; i++)
        {
            byte* ev = _events + (i * s_eventSize);
            uint flags = Unsafe.ReadUnaligned<uint>(ev);
            ulong token = Unsafe.ReadUnaligned<ulong>(ev + s_dataOffset);
            if (token == WakeToken)
            {
                DrainWake();
                events[written++] = new ReadinessEvent(WakeToken, true, false);
                continue;
            }

            // Errors and hang-ups wake both directions: the retried syscall reports what happened.
            bool failed = (flags & (EPOLLERR | EPOLLHUP)) != 0;
            events[written++] = new ReadinessEvent(
                token,
                failed || (flags & (EPOLLIN | EPOLLRDHUP | EPOLLPRI)) != 0,
                failed || (flags & EPOLLOUT) != 0,
                (flags & (EPOLLERR | EPOLLHUP | EPOLLRDHUP | EPOLLPRI)) != 0);
        }

        return written;
    }

    public void Wake()
    {
        bool added = false;
        try
        {
            _wakeHandle.DangerousAddRef(ref added);
            ulong one = 1;
            _ = Libc.Write(_wakeFd, &one, sizeof(ulong));
        }
        catch (ObjectDisposedException)
        {
            // The reactor is gone; nothing waits any more.
        }
        finally
        {
            if (added)
            {
                _wakeHandle.DangerousRelease();
            }
        }
    }

    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
        {
            return;
        }

        _wakeHandle.Dispose(); // closes the eventfd once no Wake holds it
        Libc.Close(_epollFd);
        NativeMemory.Free(_events);
    }

    /// <summary>Closes what the constructor opened before it failed (fields it did not reach are still zero or null).</summary>
    private void CloseAfterFailedConstruction()
    {
        if (_wakeHandle is not null)
        {
            _wakeHandle.Dispose();
        }
        else if (_wakeFd >= 0)
        {
            Libc.Close(_wakeFd); // opened, but the handle that would own it was not created
        }

        Libc.Close(_epollFd);
        NativeMemory.Free(_events); // null (not allocated yet) is allowed
    }

    private int WaitOnce(int max, long timeoutNanoseconds)
    {
        if (timeoutNanoseconds < 0)
        {
            return Libc.EpollWait(_epollFd, _events, max, -1);
        }

        if (_hasPWait2)
        {
            var timeout = new TimeSpec
            {
                Seconds = timeoutNanoseconds / 1_000_000_000,
                Nanoseconds = timeoutNanoseconds % 1_000_000_000,
            };

            try
            {
                // ENOSYS: a kernel older than 5.11. EPERM, which epoll_pwait2 itself never returns: a seccomp filter
                // that does not know the call (container runtimes' and systemd's older profiles answer so).
                int count = FaultInjection.Fails("epoll_pwait2") ? -1 : Libc.EpollPWait2(_epollFd, _events, max, &timeout, null);
                if (count >= 0 || Errno.Last is not (ENOSYS or EPERM))
                {
                    return count;
                }
            }
            catch (EntryPointNotFoundException)
            {
                // glibc older than 2.35.
            }

            _hasPWait2 = false; // the kernel, libc or sandbox refuses it: milliseconds from now on
        }

        // Rounded up: a wait never ends before the deadline the wheel asked for.
        long milliseconds = (timeoutNanoseconds + 999_999) / 1_000_000;
        return Libc.EpollWait(_epollFd, _events, max, (int)Math.Min(milliseconds, int.MaxValue));
    }

    private void DrainWake()
    {
        ulong value;
        _ = Libc.Read(_wakeFd, &value, sizeof(ulong));
    }

    private void Ctl(int op, int fd, uint flags, ulong token)
    {
        if (FaultInjection.Fails("epoll_ctl") || CtlOnce(op, fd, flags, token) != 0)
        {
            Errno.ThrowLast("epoll_ctl");
        }
    }

    /// <summary>One <c>epoll_ctl</c> with an event of <paramref name="flags"/> tagged <paramref name="token"/>: 0, or -1 with errno set.</summary>
    private int CtlOnce(int op, int fd, uint flags, ulong token)
    {
        byte* ev = stackalloc byte[16];
        Unsafe.WriteUnaligned(ev, flags);
        Unsafe.WriteUnaligned(ev + s_dataOffset, token);
        return Libc.EpollCtl(_epollFd, op, fd, ev);
    }
}
