using System.Net;
using System.Net.Sockets;
using Scheduler.Native;
using Scheduler.Timers;
using static Scheduler.Native.LinuxConstants;

namespace Scheduler.IO;

public sealed partial class ReactorSocket
{
    /// <summary>Where <c>sun_path</c> starts in a <c>sockaddr_un</c> (after <c>sa_family_t</c>).</summary>
    private const int SocketPathOffset = 2;

    /// <summary>
    /// Creates a listening socket bound to <paramref name="endPoint"/> (with address reuse for IP endpoints, so a
    /// restarted server can rebind at once). Port 0 picks a free port; read it from <see cref="LocalEndPoint"/>.
    /// </summary>
    /// <param name="reactor">The reactor that drives the socket.</param>
    /// <param name="endPoint">An <see cref="IPEndPoint"/> (IPv4 or IPv6) or a <see cref="UnixDomainSocketEndPoint"/>.</param>
    /// <param name="backlog">The kernel's accept queue length (capped by <c>net.core.somaxconn</c>).</param>
    /// <exception cref="ArgumentNullException">An argument is null.</exception>
    /// <exception cref="ArgumentException">The endpoint type is not supported.</exception>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="backlog"/> is less than 1.</exception>
    /// <exception cref="ObjectDisposedException"><paramref name="reactor"/> is disposed.</exception>
    /// <exception cref="SocketException">bind or listen failed (address in use, ...).</exception>
    public static unsafe ReactorSocket Listen(IoReactor reactor, EndPoint endPoint, int backlog = 512)
    {
        ArgumentNullException.ThrowIfNull(reactor);
        ArgumentNullException.ThrowIfNull(endPoint);
        ArgumentOutOfRangeException.ThrowIfLessThan(backlog, 1);
        reactor.ThrowIfDisposed();

        SocketAddress address = SocketAddressMarshal.Serialize(endPoint);
        SafeFileDescriptor handle = CreateHandle(address.Family);
        int createdSocketFileLength = 0;
        try
        {
            int fd = handle.Fd;
            if (address.Family != AddressFamily.Unix)
            {
                SetOption(fd, SOL_SOCKET, SO_REUSEADDR, 1, "setsockopt(SO_REUSEADDR)");
            }

            fixed (byte* native = address.Buffer.Span)
            {
                if (Libc.Bind(fd, native, (uint)address.Size) != 0)
                {
                    Errno.ThrowLast($"bind to {endPoint}");
                }
            }

            // A Unix domain bind to a path creates the socket file (it fails with EADDRINUSE when the path exists, so a
            // file there now is ours): left behind by a failure below, it would make every retry's bind fail.
            createdSocketFileLength = SocketFileLength(address);

            if (FaultInjection.Fails("listen") || Libc.Listen(fd, backlog) != 0)
            {
                Errno.ThrowLast("listen");
            }

            var socket = new ReactorSocket(reactor, handle, address.Family, isListener: true);
            reactor.Register(socket, fd);
            return socket;
        }
        catch
        {
            // The file goes first, while our socket still holds the name: once the fd is closed, another process
            // may remove the stale file and bind a new one at that path, which we must not take away.
            if (createdSocketFileLength > 0)
            {
                RemoveSocketFile(address, createdSocketFileLength);
            }

            handle.Dispose();
            throw;
        }
    }

    /// <summary>
    /// The length of the file path in a Unix domain <c>sockaddr_un</c> (up to its NUL, if any), or 0 when the address
    /// names no file: an IP address, an abstract name (a leading NUL) or an unnamed one.
    /// </summary>
    private static int SocketFileLength(SocketAddress address)
    {
        if (address.Family != AddressFamily.Unix || address.Size <= SocketPathOffset || address.Buffer.Span[SocketPathOffset] == 0)
        {
            return 0;
        }

        ReadOnlySpan<byte> path = address.Buffer.Span[SocketPathOffset..address.Size];
        int end = path.IndexOf((byte)0);
        return end < 0 ? path.Length : end;
    }

    /// <summary>
    /// Best effort: unlinks the socket file a failed <see cref="Listen"/> created, whose path is the first
    /// <paramref name="length"/> bytes of <c>sun_path</c> (the error Listen throws matters more).
    /// </summary>
    private static unsafe void RemoveSocketFile(SocketAddress address, int length)
    {
        Span<byte> path = stackalloc byte[length + 1]; // NUL-terminated; a sockaddr_un path is at most 108 bytes
        address.Buffer.Span.Slice(SocketPathOffset, length).CopyTo(path);
        path[length] = 0;
        fixed (byte* native = path)
        {
            _ = Libc.Unlink(native);
        }
    }

    /// <summary>
    /// Connects to <paramref name="endPoint"/>: starts a non-blocking connect, waits for the socket to become
    /// writable, then reads the socket error, so a refused connect throws <see cref="SocketException"/> with
    /// <see cref="SocketError.ConnectionRefused"/>. A Unix domain connect to a listener whose backlog is full waits
    /// for room, as a blocking connect does (until it connects, <paramref name="cancellationToken"/> is cancelled or
    /// the reactor is disposed), instead of failing with <see cref="SocketError.WouldBlock"/>.
    /// </summary>
    /// <exception cref="ArgumentNullException">An argument is null.</exception>
    /// <exception cref="ArgumentException">The endpoint type is not supported.</exception>
    /// <exception cref="ObjectDisposedException"><paramref name="reactor"/> is disposed.</exception>
    /// <exception cref="SocketException">The connect failed (refused, unreachable, ...).</exception>
    /// <exception cref="OperationCanceledException"><paramref name="cancellationToken"/> was cancelled; the half-open socket is closed.</exception>
    public static ValueTask<ReactorSocket> ConnectAsync(IoReactor reactor, EndPoint endPoint, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(reactor);
        ArgumentNullException.ThrowIfNull(endPoint);
        reactor.ThrowIfDisposed();
        SocketAddress address = SocketAddressMarshal.Serialize(endPoint);
        if (cancellationToken.IsCancellationRequested)
        {
            return ValueTask.FromCanceled<ReactorSocket>(cancellationToken);
        }

        ReactorSocket socket;
        ConnectStart start;
        SafeFileDescriptor handle = CreateHandle(address.Family);
        try
        {
            bool reportsQueuedBytes = ConfigureStream(handle.Fd, address.Family);
            start = StartConnect(handle.Fd, address, endPoint);
            if (start == ConnectStart.BacklogFull)
            {
                return ConnectWhenBacklogHasRoomAsync(reactor, handle, address, endPoint, cancellationToken); // owns the handle now
            }

            socket = new ReactorSocket(reactor, handle, address.Family, isListener: false, reportsQueuedBytes);
            // Registered after connect(): EPOLL_CTL_ADD reports current readiness, so no edge is missed, and an
            // unconnected socket's spurious EPOLLHUP is never seen.
            reactor.Register(socket, handle.Fd);
        }
        catch
        {
            handle.Dispose();
            throw;
        }

        return start == ConnectStart.Connected ? new ValueTask<ReactorSocket>(socket) : socket.CompleteConnectAsync(endPoint, cancellationToken);
    }

    /// <summary>Wraps a descriptor from accept4 in a registered socket; <paramref name="fd"/> is closed if anything fails.</summary>
    internal static ReactorSocket CreateAccepted(IoReactor reactor, int fd, AddressFamily family)
    {
        SafeFileDescriptor handle;
        try
        {
            handle = new SafeFileDescriptor(fd);
        }
        catch
        {
            Libc.Close(fd); // out of memory for its owner: nothing else would ever close it
            throw;
        }

        try
        {
            bool reportsQueuedBytes = ConfigureStream(fd, family);
            var socket = new ReactorSocket(reactor, handle, family, isListener: false, reportsQueuedBytes);
            reactor.Register(socket, fd);
            return socket;
        }
        catch
        {
            handle.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Options of a connected (or connecting) stream socket: TCP sends small writes at once (no Nagle), and asks the
    /// kernel to report with every read how many bytes stay queued (TCP_INQ, Linux 4.18 and later), so a read that
    /// fills its buffer can still prove the socket drained. Returns whether that report is on.
    /// </summary>
    private static unsafe bool ConfigureStream(int fd, AddressFamily family)
    {
        if (family == AddressFamily.Unix)
        {
            return false;
        }

        SetOption(fd, IPPROTO_TCP, TCP_NODELAY, 1, "setsockopt(TCP_NODELAY)");

        // The control message is parsed with the LP64 layout of struct cmsghdr; an older kernel refuses the option.
        int on = 1;
        return Environment.Is64BitProcess && Libc.SetSockOpt(fd, IPPROTO_TCP, TCP_INQ, &on, sizeof(int)) == 0;
    }

    /// <summary>How a non-blocking <c>connect(2)</c> started.</summary>
    private enum ConnectStart
    {
        /// <summary>Connected at once (Unix domain sockets, usually).</summary>
        Connected,

        /// <summary>EINPROGRESS (TCP): writability, then SO_ERROR, tell the outcome.</summary>
        InProgress,

        /// <summary>
        /// EAGAIN from a Unix domain socket: the listener's backlog is full. Nothing was started and no edge will say
        /// when there is room (the unconnected socket polls as hung up): the connect must be tried again.
        /// </summary>
        BacklogFull,
    }

    private static unsafe ConnectStart StartConnect(int fd, SocketAddress address, EndPoint endPoint)
    {
        int rc;
        int errno;
        fixed (byte* native = address.Buffer.Span)
        {
            do
            {
                rc = FaultInjection.Fails("connect") ? -1 : Libc.Connect(fd, native, (uint)address.Size);
                errno = rc == 0 ? 0 : Errno.Last;
            }
            while (rc != 0 && errno == EINTR);
        }

        if (rc == 0)
        {
            return ConnectStart.Connected;
        }

        if (errno == EINPROGRESS)
        {
            return ConnectStart.InProgress;
        }

        if (errno == EAGAIN && address.Family == AddressFamily.Unix)
        {
            return ConnectStart.BacklogFull;
        }

        throw Errno.ToException(errno, $"connect to {endPoint}");
    }

    /// <summary>
    /// A Unix domain connect whose listener's backlog was full: what a blocking <c>connect(2)</c> would wait for, tried
    /// again with a growing pause (1 ms to 64 ms) until it connects, fails otherwise, the token is cancelled or the
    /// reactor is disposed. Throwing WouldBlock at an asynchronous caller instead would fail a burst of clients
    /// against a server that is merely slow to accept. The socket is registered only once connected: unconnected, it
    /// polls as hung up, which would void its receives' drain proofs for good (see <see cref="DrainProofsHold"/>).
    /// </summary>
    private static async ValueTask<ReactorSocket> ConnectWhenBacklogHasRoomAsync(
        IoReactor reactor, SafeFileDescriptor handle, SocketAddress address, EndPoint endPoint, CancellationToken cancellationToken)
    {
        try
        {
            var pause = TimeSpan.FromMilliseconds(1);
            do
            {
                await PauseAsync(reactor, pause, cancellationToken).ConfigureAwait(false);
                pause = TimeSpan.FromTicks(Math.Min(pause.Ticks * 2, TimeSpan.TicksPerMillisecond * 64));
            }
            while (StartConnectUnlessDisposed(reactor, handle.Fd, address, endPoint) == ConnectStart.BacklogFull);

            // A Unix domain connect that starts completes at once (it never reports EINPROGRESS).
            var socket = new ReactorSocket(reactor, handle, address.Family, isListener: false);
            reactor.Register(socket, handle.Fd);
            return socket;
        }
        catch
        {
            handle.Dispose();
            throw;
        }
    }

    /// <summary>
    /// A pause between two tries of a waiting Unix domain connect, on the reactor's own wheel: pooled delays, and the
    /// reactor's disposal ends the wait with <see cref="ObjectDisposedException"/> (<see cref="IoReactor.Timers"/> throws
    /// it too once the reactor is disposed). A user may dispose that wheel while the reactor runs on, which leaves the
    /// sockets running (documented), so the connect must not fail for it: the pause then falls back to
    /// <see cref="Task.Delay(TimeSpan, CancellationToken)"/>, and a reactor disposed meanwhile is caught by the next try.
    /// </summary>
    private static async ValueTask PauseAsync(IoReactor reactor, TimeSpan pause, CancellationToken cancellationToken)
    {
        TimerWheel wheel = reactor.Timers;
        if (!wheel.IsDisposed)
        {
            try
            {
                await wheel.DelayAsync(pause, cancellationToken).ConfigureAwait(false);
                return;
            }
            catch (ObjectDisposedException) when (!reactor.IsDisposed)
            {
                // The user disposed the wheel during the pause (or just before it): wait the pause out elsewhere.
            }
        }

        await Task.Delay(pause, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>
    /// One more try of a waiting Unix domain connect, unless the reactor was disposed meanwhile. A delay that completed
    /// just before the disposal still runs its continuation, and the disposal closes every socket registered with the
    /// reactor, the listener too when it is one of them: the connect would then fail with ConnectionRefused, where
    /// every other operation pending at the disposal reports <see cref="ObjectDisposedException"/>.
    /// </summary>
    private static ConnectStart StartConnectUnlessDisposed(IoReactor reactor, int fd, SocketAddress address, EndPoint endPoint)
    {
        reactor.ThrowIfDisposed();
        try
        {
            return StartConnect(fd, address, endPoint);
        }
        catch (SocketException) when (reactor.IsDisposed)
        {
            // Disposed while connect(2) ran: its listener may be among the sockets the disposal just closed.
            reactor.ThrowIfDisposed();
            throw; // unreachable: the reactor is disposed
        }
    }

    private async ValueTask<ReactorSocket> CompleteConnectAsync(EndPoint endPoint, CancellationToken cancellationToken)
    {
        try
        {
            if (!_connect!.TryAcquire())
            {
                throw new InvalidOperationException("The connect operation is already in use.");
            }

            _connect.Target = endPoint; // named by the error, as the immediate failure in StartConnect names it

            await _connect.Run(cancellationToken).ConfigureAwait(false);
            return this;
        }
        catch
        {
            Dispose();
            throw;
        }
    }

    private static SafeFileDescriptor CreateHandle(AddressFamily family)
    {
        // The owner first (as the BCL's SafeHandle-returning calls do): allocated after socket(2), an out-of-memory
        // failure between the two would leave the fd open with no owner.
        var handle = new SafeFileDescriptor();
        int fd = Libc.Socket(SocketAddressMarshal.ToNativeFamily(family), SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0)
        {
            int errno = Errno.Last;
            handle.Dispose(); // owns nothing: no close
            throw Errno.ToException(errno, "socket");
        }

        handle.SetFd(fd);
        return handle;
    }

    private static unsafe void SetOption(int fd, int level, int name, int value, string what)
    {
        if (FaultInjection.Fails("setsockopt") || Libc.SetSockOpt(fd, level, name, &value, sizeof(int)) != 0)
        {
            Errno.ThrowLast(what);
        }
    }
}
