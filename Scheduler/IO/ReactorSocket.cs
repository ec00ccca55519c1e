using System.Buffers;
using System.Net;
using System.Net.Sockets;
using Scheduler.Native;
using static Scheduler.Native.LinuxConstants;

namespace Scheduler.IO;

/// <summary>
/// A non-blocking stream socket (TCP over IPv4/IPv6, or a Unix domain socket) driven by an <see cref="IoReactor"/>.
/// Operations try the system call first and only wait for epoll readiness when the kernel says EAGAIN (a receive
/// right after one that proved the socket drained, with no edge since, waits at once);
/// awaited on a <see cref="WorkStealingTaskScheduler"/> worker, they resume on that worker.
/// </summary>
/// <remarks>
/// At most one receive (or accept) and one send may be in flight at a time; a second concurrent one fails with
/// <see cref="InvalidOperationException"/>. Steady-state receives and sends allocate nothing: each socket owns one
/// reusable operation per direction. Errors surface as <see cref="SocketException"/> carrying the OS error,
/// <see cref="ObjectDisposedException"/> after <see cref="Dispose"/> (also for operations pending at that moment),
/// and <see cref="OperationCanceledException"/> on cancellation, after which the socket remains usable.
/// </remarks>
public sealed partial class ReactorSocket : IDisposable
{
    private readonly SafeFileDescriptor _handle;
    private readonly AddressFamily _family;
    private readonly ReceiveOperation? _receive;
    private readonly SendOperation? _send;
    private readonly AcceptOperation? _accept;
    private readonly ConnectOperation? _connect;
    private int _readSequence;
    private int _writeSequence;
    private int _drainProofsVoid;
    private int _connectionErrorTakenBySend;

    // Whether a send attempt is under way (see BeginSendAttempt), and whether a receive that read 0 meanwhile waits for
    // it to end (see ConnectionErrorAfterEndOfStream).
    private const int NoSendAttempt = 0;
    private const int SendAttemptUnderWay = 1;
    private const int SendAttemptWithWaitingReceive = 2;
    private int _sendAttempt;
    private int _disposed;
    private EndPoint? _localEndPoint;
    private EndPoint? _remoteEndPoint;

    private ReactorSocket(IoReactor reactor, SafeFileDescriptor handle, AddressFamily family, bool isListener, bool reportsQueuedBytes = false)
    {
        Reactor = reactor;
        _handle = handle;
        _family = family;
        if (isListener)
        {
            _accept = new AcceptOperation(this);
        }
        else
        {
            _receive = new ReceiveOperation(this, reportsQueuedBytes);
            _send = new SendOperation(this);
            _connect = new ConnectOperation(this);
        }
    }

    /// <summary>The local endpoint the socket is bound to, or null when it cannot be determined (e.g. after disposal).</summary>
    /// <remarks>Null after disposal even when read before it (the cached value is not returned for a closed socket).</remarks>
    public EndPoint? LocalEndPoint => IsDisposed ? null : _localEndPoint ??= QueryEndPoint(remote: false);

    /// <summary>
    /// The connected peer's endpoint, or null for a listening or disposed socket, and for a connection that failed
    /// (was reset, ...) before this was first read: the kernel then has no peer to tell.
    /// </summary>
    /// <remarks>Null after disposal even when read before it (the cached value is not returned for a closed socket).</remarks>
    public EndPoint? RemoteEndPoint => IsDisposed ? null : _remoteEndPoint ??= _accept is null ? QueryEndPoint(remote: true) : null;

    internal IoReactor Reactor { get; }

    internal ulong RegistrationToken { get; set; }

    internal int RegistrationSlot { get; set; } = -1;

    internal bool IsDisposed => Volatile.Read(ref _disposed) != 0;

    internal bool IsListener => _accept is not null;

    /// <summary>
    /// For tests only (null otherwise): called with the socket at named points of races that are a few instructions
    /// wide, so that a test can hold one party there. <c>"accept-attempt"</c>: an accept attempt, before it takes the
    /// accept queue's lock; <c>"dispose-queue-closed"</c>: <see cref="Dispose"/>, after it closed the queued
    /// connections and before it closes the fd; <c>"send-connection-error"</c>: a send that took a failed connection's
    /// error from the kernel, before it records it (see <see cref="ConnectionErrorTakenBySend"/>).
    /// </summary>
    internal static Action<ReactorSocket, string>? RaceHookForTests { get; set; }

    /// <summary>
    /// Accepts the next connection of a listening socket. Each time the kernel reports the listener readable, its
    /// accept queue is drained in a batch, so later calls complete synchronously until the batch is used up.
    /// </summary>
    /// <exception cref="SocketException">accept failed (e.g. too many open files).</exception>
    /// <exception cref="ObjectDisposedException">The listener was disposed before or during the accept.</exception>
    /// <exception cref="OperationCanceledException"><paramref name="cancellationToken"/> was cancelled; the listener stays usable.</exception>
    /// <exception cref="InvalidOperationException">Another accept is in flight, or the socket is not listening.</exception>
    public ValueTask<ReactorSocket> AcceptAsync(CancellationToken cancellationToken = default)
    {
        if (IsDisposed)
        {
            return ValueTask.FromException<ReactorSocket>(CreateDisposedException());
        }

        if (_accept is null)
        {
            return ValueTask.FromException<ReactorSocket>(new InvalidOperationException("Only a socket created with Listen can accept connections."));
        }

        if (!_accept.TryAcquire())
        {
            return ValueTask.FromException<ReactorSocket>(new InvalidOperationException("An accept is already in progress on this socket; only one accept may be pending at a time."));
        }

        return _accept.Run(cancellationToken);
    }

    /// <summary>
    /// Receives into <paramref name="buffer"/>: completes synchronously when data is already there, else when the
    /// socket becomes readable. Returns the byte count, or 0 once the peer has shut down its send side. An empty
    /// buffer waits until data (or end of stream) is available without consuming it, and returns 0.
    /// </summary>
    /// <exception cref="SocketException">The connection failed (reset, ...).</exception>
    /// <exception cref="ObjectDisposedException">The socket was disposed before or during the receive.</exception>
    /// <exception cref="OperationCanceledException"><paramref name="cancellationToken"/> was cancelled; no data was consumed.</exception>
    /// <exception cref="InvalidOperationException">Another receive is in flight, or this is a listening socket.</exception>
    public ValueTask<int> ReceiveAsync(Memory<byte> buffer, CancellationToken cancellationToken = default)
    {
        if (IsDisposed)
        {
            return ValueTask.FromException<int>(CreateDisposedException());
        }

        if (_receive is null)
        {
            return ValueTask.FromException<int>(new InvalidOperationException("A listening socket cannot receive; use AcceptAsync."));
        }

        if (!_receive.TryAcquire())
        {
            return ValueTask.FromException<int>(new InvalidOperationException("A receive is already in progress on this socket; only one receive may be pending at a time."));
        }

        _receive.Buffer = buffer;
        return _receive.Run(cancellationToken);
    }

    /// <summary>Sends the whole of <paramref name="buffer"/>; completes (with its length) once the kernel has taken every byte.</summary>
    /// <exception cref="SocketException">The connection failed (reset, peer gone, ...).</exception>
    /// <exception cref="ObjectDisposedException">The socket was disposed before or during the send.</exception>
    /// <exception cref="OperationCanceledException"><paramref name="cancellationToken"/> was cancelled; part of the buffer may have been sent.</exception>
    /// <exception cref="InvalidOperationException">Another send is in flight, or this is a listening socket.</exception>
    public ValueTask<int> SendAsync(ReadOnlyMemory<byte> buffer, CancellationToken cancellationToken = default)
    {
        if (!TryAcquireSend(out ValueTask<int> failure))
        {
            return failure;
        }

        _send!.SetBuffer(buffer);
        return _send.Run(cancellationToken);
    }

    /// <summary>Sends every segment of <paramref name="buffers"/>, gathering up to 64 segments per <c>sendmsg</c>.</summary>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="buffers"/> is longer than <see cref="int.MaxValue"/> bytes; nothing was sent.</exception>
    internal ValueTask<int> SendAsync(in ReadOnlySequence<byte> buffers, CancellationToken cancellationToken = default)
    {
        // Checked before the send operation is claimed: a failure after the claim would leave it busy for good.
        if (buffers.Length > int.MaxValue)
        {
            return ValueTask.FromException<int>(new ArgumentOutOfRangeException(
                nameof(buffers), buffers.Length, "A send takes at most int.MaxValue bytes; send a longer sequence in slices."));
        }

        if (!TryAcquireSend(out ValueTask<int> failure))
        {
            return failure;
        }

        _send!.SetBuffers(buffers);
        return _send.Run(cancellationToken);
    }

    /// <summary>Disables sends and/or receives (<c>shutdown(2)</c>); after <see cref="SocketShutdown.Send"/> the peer reads end of stream.</summary>
    /// <exception cref="ObjectDisposedException">The socket was disposed.</exception>
    /// <exception cref="SocketException">The OS refused (e.g. the socket is not connected).</exception>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="how"/> is not a defined value.</exception>
    public void Shutdown(SocketShutdown how)
    {
        int nativeHow = how switch
        {
            SocketShutdown.Receive => SHUT_RD,
            SocketShutdown.Send => SHUT_WR,
            SocketShutdown.Both => SHUT_RDWR,
            _ => throw new ArgumentOutOfRangeException(nameof(how), how, "Expected Receive, Send or Both."),
        };

        using FdReference fd = AddRef(); // on a disposed socket, throws what CreateDisposedException says
        if (Libc.Shutdown(fd.Fd, nativeHow) != 0)
        {
            Errno.ThrowLast("shutdown");
        }
    }

    /// <summary>
    /// Closes the socket. Operations pending at this moment fail with <see cref="ObjectDisposedException"/>; the fd is
    /// closed once no system call uses it any more. Idempotent.
    /// </summary>
    /// <remarks>
    /// Like <see cref="Socket.Close()"/>, this does not linger: closed with input still unread, the kernel resets the
    /// connection and drops what the peer has not acknowledged yet. For an orderly end, <see cref="Shutdown"/> the
    /// send side and receive until 0 first (<see cref="ReactorConnection.DisposeAsync"/> does this within a bound).
    /// </remarks>
    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
        {
            return;
        }

        Reactor.Unregister(this);
        ObjectDisposedException error = CreateDisposedException();
        _receive?.TryFinishFromPending(error);
        _send?.TryFinishFromPending(error);
        _connect?.TryFinishFromPending(error);
        if (_accept is not null)
        {
            _accept.TryFinishFromPending(error);
            _accept.CloseQueued();
            RaceHookForTests?.Invoke(this, "dispose-queue-closed");
        }

        _handle.Dispose();
    }

    /// <summary>
    /// Whether a receive that proved the socket drained (a short read, EAGAIN, or TCP's report of nothing queued) lets
    /// the next receive wait for the next edge without trying the system call (see
    /// <see cref="ReactorOperation{TResult}"/>). True until the reactor reports a hang-up, an error, the peer's
    /// shutdown or urgent data: a short read does not reveal an end of stream or an error queued behind the data,
    /// and stops at the urgent mark with data still queued, and none of those comes with a later edge.
    /// </summary>
    internal bool DrainProofsHold => Volatile.Read(ref _drainProofsVoid) == 0;

    /// <summary>
    /// The errno of a failed connection (a reset, a timeout, ...) that a send took, or 0. The kernel reports that error
    /// to one call only (whichever asks first) and an end of stream to every receive after it; a receive that reads 0
    /// then throws this error instead, so a stream cut short never looks like an orderly end.
    /// </summary>
    internal int ConnectionErrorTakenBySend => Volatile.Read(ref _connectionErrorTakenBySend);

    internal void RecordConnectionErrorTakenBySend(int errno) => Interlocked.CompareExchange(ref _connectionErrorTakenBySend, errno, 0);

    /// <summary>
    /// What <see cref="ConnectionErrorAfterEndOfStream"/> returns while a send attempt is under way: the receive parks
    /// (as on EAGAIN), and that attempt, as it ends, has the reactor report the socket readable again.
    /// </summary>
    internal const int EndOfStreamAwaitsSendAttempt = -1;

    /// <summary>
    /// For a receive that read 0: <see cref="ConnectionErrorTakenBySend"/> (0 for an orderly end), or
    /// <see cref="EndOfStreamAwaitsSendAttempt"/> while a send attempt is under way. A send that took the error from the
    /// kernel records it a few instructions later; a receive that read 0 in between would report an orderly end. Such
    /// a receive does not wait for the send (on the reactor thread that would stall every other socket for as long
    /// as a caller's send runs: preempted, or handing the kernel a long buffer): it parks, and the attempt, once it
    /// has recorded what it took, asks for one more edge (see <see cref="EndSendAttempt"/>), whose retry reads 0
    /// again and then finds the record. One CAS decides: either the attempt has ended (and recorded), or it will
    /// see the request when it ends.
    /// </summary>
    internal int ConnectionErrorAfterEndOfStream()
    {
        int taken = ConnectionErrorTakenBySend;
        if (taken != 0)
        {
            return taken;
        }

        if (Interlocked.CompareExchange(ref _sendAttempt, SendAttemptWithWaitingReceive, SendAttemptUnderWay) == NoSendAttempt)
        {
            // Every attempt records before it ends (the exchange in EndSendAttempt, a full fence, which this CAS orders).
            return ConnectionErrorTakenBySend;
        }

        return EndOfStreamAwaitsSendAttempt;
    }

    /// <summary>
    /// A send attempt starts: from here until <see cref="EndSendAttempt"/> its system calls may take a failed
    /// connection's error before it is recorded. A full fence, so the mark is seen before the kernel can hand the error
    /// over: a receive that reads 0 after that also sees the attempt.
    /// </summary>
    internal void BeginSendAttempt() => Interlocked.Exchange(ref _sendAttempt, SendAttemptUnderWay);

    /// <summary>
    /// The send attempt that <see cref="BeginSendAttempt"/> marked has recorded what it took and ends. When a receive
    /// read 0 meanwhile and parked, the socket is reported readable once more (an end of stream stays readable for
    /// good), so that the reactor retries that receive, on its own thread, where no continuation runs inline.
    /// <paramref name="fd"/> is the attempt's reference, which keeps the fd number ours for the call.
    /// </summary>
    internal void EndSendAttempt(FdReference fd)
    {
        if (Interlocked.Exchange(ref _sendAttempt, NoSendAttempt) == SendAttemptWithWaitingReceive)
        {
            Reactor.ReportReadinessAgain(this, fd.Fd);
        }
    }

    /// <summary>The reactor thread calls this for every edge; it bumps the direction's sequence before retrying.</summary>
    internal void OnReadiness(bool readable, bool writable, bool exceptional)
    {
        if (exceptional)
        {
            // Sticky, and written before the sequence bump below (a full fence): a receive that reads the bumped
            // sequence (or a later one) also sees this.
            _drainProofsVoid = 1;
        }

        if (readable)
        {
            Interlocked.Increment(ref _readSequence);
            _receive?.OnReady();
            _accept?.OnReady();
        }

        if (writable)
        {
            Interlocked.Increment(ref _writeSequence);
            _send?.OnReady();
            _connect?.OnReady();
        }
    }

    /// <summary>
    /// Bytes this socket sent that the peer has not acknowledged yet (TCP; for a Unix domain socket: not read yet),
    /// <c>SIOCOUTQ</c>; 0 when the socket is disposed or the kernel cannot tell.
    /// </summary>
    internal unsafe int UnacknowledgedSendBytes()
    {
        if (!TryAddRef(out FdReference fd))
        {
            return 0;
        }

        using (fd)
        {
            int queued = 0;
            return Libc.Ioctl(fd.Fd, SIOCOUTQ, &queued) == 0 ? queued : 0;
        }
    }

    /// <summary>
    /// Whether the receive side is shut at this moment (poll(2) reports POLLRDHUP: the peer's end of stream or a reset
    /// arrived, or our own shutdown of it); false for a disposed socket. One system call, for error paths.
    /// </summary>
    internal unsafe bool IsReceiveSideShut()
    {
        if (!TryAddRef(out FdReference fd))
        {
            return false;
        }

        using (fd)
        {
            Libc.PollFd entry = default;
            entry.Fd = fd.Fd;
            entry.Events = POLLRDHUP;
            return Libc.Poll(&entry, 1, 0) == 1 && (entry.ReturnedEvents & POLLRDHUP) != 0;
        }
    }

    /// <summary>Receives that parked without a system call because the socket was known to be drained. For tests.</summary>
    internal int ReceiveAttemptsSkipped => _receive?.SkippedAttempts ?? 0;

    internal int ReadSequence(bool isWrite) => isWrite ? Volatile.Read(ref _writeSequence) : Volatile.Read(ref _readSequence);

    /// <summary>
    /// What an operation on this disposed socket reports. When the reactor stopped after an epoll failure (which disposed
    /// every socket on it), the message says so: "disposed" alone would send its reader looking for a Dispose call in
    /// their own code.
    /// </summary>
    internal ObjectDisposedException CreateDisposedException() => Reactor.FatalError is { } fatal
        ? new(GetType().FullName, $"The socket was closed because its reactor stopped after an epoll failure: {fatal.Message}")
        : new(GetType().FullName, "The socket has been disposed.");

    /// <summary>Holds the fd open for one system call; fails when the socket has been disposed.</summary>
    internal FdReference AddRef()
    {
        bool added = false;
        try
        {
            _handle.DangerousAddRef(ref added);
        }
        catch (ObjectDisposedException)
        {
            throw CreateDisposedException();
        }

        return new FdReference(_handle);
    }

    internal bool TryAddRef(out FdReference reference)
    {
        bool added = false;
        try
        {
            _handle.DangerousAddRef(ref added);
        }
        catch (ObjectDisposedException)
        {
        }

        reference = added ? new FdReference(_handle) : default;
        return added;
    }

    private bool TryAcquireSend(out ValueTask<int> failure)
    {
        failure = default;
        if (IsDisposed)
        {
            failure = ValueTask.FromException<int>(CreateDisposedException());
            return false;
        }

        if (_send is null)
        {
            failure = ValueTask.FromException<int>(new InvalidOperationException("A listening socket cannot send."));
            return false;
        }

        if (!_send.TryAcquire())
        {
            failure = ValueTask.FromException<int>(new InvalidOperationException("A send is already in progress on this socket; only one send may be pending at a time."));
            return false;
        }

        return true;
    }

    private unsafe EndPoint? QueryEndPoint(bool remote)
    {
        if (!TryAddRef(out FdReference fd))
        {
            return null;
        }

        using (fd)
        {
            byte* address = stackalloc byte[SocketAddressMarshal.MaxAddressSize];
            uint length = SocketAddressMarshal.MaxAddressSize;
            int rc = remote ? Libc.GetPeerName(fd.Fd, address, &length) : Libc.GetSockName(fd.Fd, address, &length);
            return rc != 0 ? null : SocketAddressMarshal.ToEndPoint(_family, new ReadOnlySpan<byte>(address, (int)length));
        }
    }

    /// <summary>A held reference on the fd, released by <see cref="Dispose"/>.</summary>
    internal readonly struct FdReference(SafeFileDescriptor handle) : IDisposable
    {
        public int Fd => handle.Fd;

        public void Dispose() => handle?.DangerousRelease();
    }
}
