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

    private const uint SocketEvents = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;
    private const int MaxEvents = 256;

    // struct epoll_event is packed (12 bytes) on x86/x86-64 and naturally aligned (16 bytes) elsewhere.
    private static readonly int s_eventSize =
        RuntimeInformation.ProcessArchitecture is Architecture.X64 or Architecture.X86 ? 12 : 16;
    private static readonly int s_dataOffset = s_eventSize == 12 ? 4 : 8;

    private readonly int _epollFd;
    private readonly int _wakeFd;
    private readonly byte* _events;
    private int _disposed;

    public EpollBackend()
    {
        _epollFd = Libc.EpollCreate1(EPOLL_CLOEXEC);
        if (_epollFd < 0)
        {
            Errno.ThrowLast("epoll_create1");
        }

        _wakeFd = Libc.EventFd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        if (_wakeFd < 0)
        {
            int errno = Errno.Last;
            Libc.Close(_epollFd);
            throw Errno.ToException(errno, "eventfd");
        }

        _events = (byte*)NativeMemory.AllocZeroed((nuint)(MaxEvents * s_eventSize));
        Ctl(EPOLL_CTL_ADD, _wakeFd, EPOLLIN | EPOLLET, WakeToken);
    }

    public void Register(int fd, ulong token) => Ctl(EPOLL_CTL_ADD, fd, SocketEvents, token);

    public void Unregister(int fd)
    {
        byte* ev = stackalloc byte[16];
        _ = Libc.EpollCtl(_epollFd, EPOLL_CTL_DEL, fd, ev);
    }

    public int Wait(Span<ReadinessEvent> events)
    {
        int max = Math.Min(events.Length, MaxEvents);
        int count;
        do
        {
            count = Libc.EpollWait(_epollFd, _events, max, -1);
        }
        while (count < 0 && Errno.Last == EINTR);

        if (count < 0)
        {
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
                failed || (flags & (EPOLLIN | EPOLLRDHUP)) != 0,
                failed || (flags & EPOLLOUT) != 0);
        }

        return written;
    }

    public void Wake()
    {
        ulong one = 1;
        _ = Libc.Write(_wakeFd, &one, sizeof(ulong));
    }

    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
        {
            return;
        }

        Libc.Close(_wakeFd);
        Libc.Close(_epollFd);
        NativeMemory.Free(_events);
    }

    private void DrainWake()
    {
        ulong value;
        _ = Libc.Read(_wakeFd, &value, sizeof(ulong));
    }

    private void Ctl(int op, int fd, uint flags, ulong token)
    {
        byte* ev = stackalloc byte[16];
        Unsafe.WriteUnaligned(ev, flags);
        Unsafe.WriteUnaligned(ev + s_dataOffset, token);
        if (Libc.EpollCtl(_epollFd, op, fd, ev) != 0)
        {
            Errno.ThrowLast("epoll_ctl");
        }
    }
}
