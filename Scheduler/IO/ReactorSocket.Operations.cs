using System.Buffers;
using System.Net;
using System.Net.Sockets;
using Scheduler.Native;
using static Scheduler.Native.LinuxConstants;

namespace Scheduler.IO;

public sealed partial class ReactorSocket
{
    /// <summary>
    /// recvmsg(2) into one buffer (with TCP_INQ's report of the bytes still queued where the kernel gives it); an empty
    /// buffer peeks one byte to wait for readability.
    /// </summary>
    private sealed class ReceiveOperation(ReactorSocket socket, bool reportsQueuedBytes) : ReactorOperation<int>(socket, isWrite: false)
    {
        // struct cmsghdr on LP64: size_t cmsg_len, int cmsg_level, int cmsg_type, then the data, 8-byte aligned.
        private const int ControlLevelOffset = 8;
        private const int ControlTypeOffset = 12;
        private const int ControlDataOffset = 16;
        private const int ControlSpace = 24; // CMSG_SPACE(sizeof(int))

        public Memory<byte> Buffer { get; set; }

        protected override unsafe bool TryExecute(FdReference fd, out int result, out Exception? error)
        {
            result = 0;
            error = null;
            Span<byte> span = Buffer.Span;
            byte peek;
            bool waitOnly = span.IsEmpty;
            fixed (byte* buffer = span)
            {
                while (true)
                {
                    int queued = -1;
                    bool cutShort = false;
                    nint n = waitOnly ? Libc.Recv(fd.Fd, &peek, 1, MSG_PEEK)
                        : ReceiveMessage(fd.Fd, buffer, span.Length, reportsQueuedBytes, out queued, out cutShort);
                    if (n == 0 && Socket.ConnectionErrorAfterEndOfStream() is int taken and not 0)
                    {
                        if (taken == EndOfStreamAwaitsSendAttempt)
                        {
                            // A send attempt under way may have taken the error without recording it yet: park (this
                            // attempt proved nothing drained) until it ends and reports the socket readable again.
                            return false;
                        }

                        // The connection failed (a reset, a timeout) and a send took the socket's error: the kernel
                        // now reports an end of stream here, but the peer's stream was cut short, not ended.
                        error = Errno.ToException(taken, "recv");
                        return true;
                    }

                    if (n >= 0)
                    {
                        result = waitOnly ? 0 : (int)n;

                        // Drained when the kernel says nothing stays queued (it reports an end of stream as one byte),
                        // or else when a stream socket did not fill the buffer: it fills it unless its queue ran dry
                        // (or it stopped at the urgent mark, or before an end of stream: see DrainProofsHold), or it
                        // stopped after bytes that carried descriptors (a Unix domain peer's SCM_RIGHTS, which we
                        // discard: the kernel says so with MSG_CTRUNC) with the rest still queued and no edge to come.
                        LastAttemptDrained = n > 0 && !cutShort && (queued >= 0 ? queued == 0 : n < span.Length);
                        return true;
                    }

                    int errno = Errno.Last;
                    if (errno == EINTR)
                    {
                        continue;
                    }

                    if (errno == EAGAIN)
                    {
                        LastAttemptDrained = true;
                        return false;
                    }

                    error = Errno.ToException(errno, "recv");
                    return true;
                }
            }
        }

        protected override void ClearParameters() => Buffer = default;

        /// <summary>
        /// recvmsg(2): with <paramref name="reportQueued"/>, room for TCP_INQ's control message, and
        /// <paramref name="queued"/> is what stays queued (-1 when not reported). Otherwise no room for control data
        /// at all, so descriptors a Unix domain peer passes are discarded, never installed in this process;
        /// <paramref name="cutShort"/> tells that some were (the read then ends early).
        /// </summary>
        private static unsafe nint ReceiveMessage(int fd, byte* buffer, int length, bool reportQueued, out int queued, out bool cutShort)
        {
            Libc.IoVector vector = default;
            vector.Base = buffer;
            vector.Length = (nuint)length;
            byte* control = stackalloc byte[ControlSpace];
            Libc.MessageHeader message = default;
            message.IoVectors = &vector;
            message.IoVectorCount = 1;
            if (reportQueued)
            {
                message.Control = control;
                message.ControlLength = ControlSpace;
            }

            nint n = Libc.RecvMsg(fd, &message, 0);
            cutShort = n >= 0 && (message.Flags & MSG_CTRUNC) != 0;
            queued = n >= 0
                && reportQueued
                && message.ControlLength >= ControlDataOffset + sizeof(int)
                && *(int*)(control + ControlLevelOffset) == IPPROTO_TCP
                && *(int*)(control + ControlTypeOffset) == TCP_INQ
                ? *(int*)(control + ControlDataOffset)
                : -1;
            return n;
        }
    }

    /// <summary>send(2) of one buffer or sendmsg(2) gathering a sequence, until every byte is taken.</summary>
    private sealed class SendOperation(ReactorSocket socket) : ReactorOperation<int>(socket, isWrite: true)
    {
        private const int MaxIoVectors = 64;

        private ReadOnlyMemory<byte> _buffer;
        private ReadOnlySequence<byte> _buffers;
        private bool _isSequence;
        private int _total;
        private int _sent;

        public void SetBuffer(ReadOnlyMemory<byte> buffer)
        {
            _buffer = buffer;
            _isSequence = false;
            _total = buffer.Length;
            _sent = 0;
        }

        public void SetBuffers(in ReadOnlySequence<byte> buffers)
        {
            if (buffers.IsSingleSegment)
            {
                SetBuffer(buffers.First);
                return;
            }

            _buffers = buffers;
            _isSequence = true;
            _total = (int)buffers.Length; // at most int.MaxValue: SendAsync checked it before claiming the operation
            _sent = 0;
        }

        protected override bool TryExecute(FdReference fd, out int result, out Exception? error)
        {
            Socket.BeginSendAttempt();
            try
            {
                return SendRemaining(fd, out result, out error);
            }
            finally
            {
                Socket.EndSendAttempt(fd);
            }
        }

        protected override void ClearParameters()
        {
            _buffer = default;
            _buffers = default;
            _isSequence = false;
        }

        private bool SendRemaining(FdReference fd, out int result, out Exception? error)
        {
            result = 0;
            error = null;
            while (_sent < _total)
            {
                nint n = _isSequence ? SendGather(fd.Fd) : SendSingle(fd.Fd);
                if (n >= 0)
                {
                    _sent += (int)n;
                    if (_isSequence)
                    {
                        _buffers = _buffers.Slice(n);
                    }

                    continue;
                }

                int errno = Errno.Last;
                if (errno == EINTR)
                {
                    continue;
                }

                if (errno == EAGAIN)
                {
                    return false;
                }

                if (IsConnectionError(errno))
                {
                    // Linux hands the error of a failed connection to the first call that asks and then reports an
                    // end of stream to receives: tell the receive side, or a stream cut short would look complete.
                    RaceHookForTests?.Invoke(Socket, "send-connection-error");
                    Socket.RecordConnectionErrorTakenBySend(errno);
                }

                error = Errno.ToException(errno, _isSequence ? "sendmsg" : "send");
                return true;
            }

            result = _total;
            return true;
        }

        private unsafe nint SendSingle(int fd)
        {
            ReadOnlySpan<byte> remaining = _buffer.Span[_sent..];
            fixed (byte* p = remaining)
            {
                return Libc.Send(fd, p, (nuint)remaining.Length, MSG_NOSIGNAL);
            }
        }

        private unsafe nint SendGather(int fd)
        {
            // One sendmsg for up to 64 segments. Pinning is only for the duration of the call.
            Libc.IoVector* vectors = stackalloc Libc.IoVector[MaxIoVectors];
            var handles = new MemoryHandleBuffer();
            int count = 0;
            try
            {
                foreach (ReadOnlyMemory<byte> segment in _buffers)
                {
                    if (segment.IsEmpty)
                    {
                        continue;
                    }

                    if (count == MaxIoVectors)
                    {
                        break;
                    }

                    handles[count] = segment.Pin();
                    vectors[count].Base = handles[count].Pointer;
                    vectors[count].Length = (nuint)segment.Length;
                    count++;
                }

                Libc.MessageHeader message = default;
                message.IoVectors = vectors;
                message.IoVectorCount = (nuint)count;
                return Libc.SendMsg(fd, &message, MSG_NOSIGNAL);
            }
            finally
            {
                for (int i = 0; i < count; i++)
                {
                    handles[i].Dispose();
                }
            }
        }
    }

    /// <summary>Room for the pins of one gathered send, on the stack.</summary>
    [System.Runtime.CompilerServices.InlineArray(64)]
    private struct MemoryHandleBuffer
    {
        private MemoryHandle _element;
    }

    /// <summary>accept4(2), draining the kernel's accept queue in batches into a small local queue.</summary>
    private sealed class AcceptOperation(ReactorSocket socket) : ReactorOperation<ReactorSocket>(socket, isWrite: false)
    {
        private const int BatchSize = 32;
        // Sized for a whole batch up front: a queue that grew inside Drain could fail (out of memory) with an fd that
        // accept4 just returned and nothing owns yet.
        private readonly Queue<int> _accepted = new(BatchSize);
        private readonly Lock _queueLock = new();

        public void CloseQueued()
        {
            lock (_queueLock)
            {
                while (_accepted.TryDequeue(out int fd))
                {
                    Libc.Close(fd);
                }
            }
        }

        protected override bool TryExecute(out ReactorSocket result, out Exception? error)
        {
            result = null!;
            error = null;
            int fd;
            RaceHookForTests?.Invoke(Socket, "accept-attempt");
            lock (_queueLock)
            {
                if (_accepted.Count == 0 && !Drain(out error))
                {
                    return error is not null;
                }

                if (!_accepted.TryDequeue(out fd))
                {
                    return error is not null;
                }
            }

            try
            {
                result = CreateAccepted(Socket.Reactor, fd, Socket._family);
            }
            catch (Exception e) when (e is SocketException or ObjectDisposedException)
            {
                error = e;
            }

            return true;
        }

        protected override void ClearParameters()
        {
        }

        // Returns true when at least one connection was queued; false with error == null on EAGAIN. The base
        // template references the listener for the batch (a disposed listener: false with the disposed error).
        private bool Drain(out Exception? error) => base.TryExecute(out _, out error) && error is null;

        // The batch itself, called only through Drain (TryExecute above is overridden to serve the local queue
        // first): true when at least one connection was queued, with no result.
        protected override unsafe bool TryExecute(FdReference fd, out ReactorSocket result, out Exception? error)
        {
            result = null!;
            error = null;

            // Under the queue lock with the fd referenced: a Dispose that already passed CloseQueued (it marks the
            // socket disposed before it takes this lock) would never close what this batch accepts. Checked here, the
            // flag tells which came first: either Dispose has not taken the lock yet and will close this batch, or it
            // has and nothing is accepted.
            if (Socket.IsDisposed)
            {
                error = Socket.CreateDisposedException();
                return false;
            }

            int skipped = 0;
            while (_accepted.Count < BatchSize)
            {
                int accepted = Libc.Accept4(fd.Fd, null, null, SOCK_NONBLOCK | SOCK_CLOEXEC);
                if (accepted >= 0)
                {
                    _accepted.Enqueue(accepted);
                    continue;
                }

                int errno = Errno.Last;
                if (IsSkippableAcceptError(errno) && ++skipped <= MaxSkippedPerAttempt)
                {
                    // A connection that failed while it waited in the backlog (reset, or a network error the kernel
                    // passes on at accept): accept(2) says to treat these like EAGAIN and try again. Failing the
                    // caller's AcceptAsync for them would stop a typical accept loop because of one broken client.
                    // Bounded, so an error that is not about one connection cannot spin here.
                    continue;
                }

                if (errno != EAGAIN && _accepted.Count == 0)
                {
                    error = Errno.ToException(errno, "accept4");
                }

                break;
            }

            return _accepted.Count > 0;
        }
    }

    /// <summary>
    /// The errors TCP records on a connection that failed (<c>sk_err</c>: a reset, a retransmission or user timeout,
    /// or the ICMP error behind one), which the kernel reports once, to whichever call asks first. Not EPIPE: a send
    /// meets that after our own shutdown, or after a reset that followed the peer's end of stream (which was complete),
    /// or once a receive has already taken the error.
    /// </summary>
    private static bool IsConnectionError(int errno) =>
        errno is ECONNRESET or ETIMEDOUT or EHOSTUNREACH or ENETUNREACH or ENETDOWN or EHOSTDOWN or ECONNABORTED;

    /// <summary>How many failed connections one accept attempt skips before it reports the error (accept(2)'s retry advice).</summary>
    private const int MaxSkippedPerAttempt = 1024;

    /// <summary>
    /// EINTR, and the errors Linux's accept passes on from a connection that failed in the backlog: ECONNABORTED and the
    /// TCP/IP network errors accept(2) lists to be treated like EAGAIN (ENETDOWN, EPROTO, ENOPROTOOPT, EHOSTDOWN, ENONET,
    /// EHOSTUNREACH, EOPNOTSUPP, ENETUNREACH).
    /// </summary>
    internal static bool IsSkippableAcceptError(int errno) =>
        errno is EINTR or ECONNABORTED or ENETDOWN or EPROTO or ENOPROTOOPT or EHOSTDOWN or ENONET or EHOSTUNREACH or EOPNOTSUPP or ENETUNREACH;

    /// <summary>Completes an in-progress connect: SO_ERROR reports failure, getpeername success.</summary>
    private sealed class ConnectOperation(ReactorSocket socket) : ReactorOperation<int>(socket, isWrite: true)
    {
        /// <summary>The endpoint being connected to, named in the error (set before the operation runs).</summary>
        public EndPoint? Target { get; set; }

        private string Operation => Target is null ? "connect" : $"connect to {Target}";

        protected override unsafe bool TryExecute(FdReference fd, out int result, out Exception? error)
        {
            result = 0;
            error = null;
            int socketError = 0;
            uint length = sizeof(int);
            if (Libc.GetSockOpt(fd.Fd, SOL_SOCKET, SO_ERROR, &socketError, &length) != 0)
            {
                socketError = Errno.Last;
            }

            if (socketError != 0)
            {
                error = Errno.ToException(socketError, Operation);
                return true;
            }

            byte* address = stackalloc byte[SocketAddressMarshal.MaxAddressSize];
            uint addressLength = SocketAddressMarshal.MaxAddressSize;
            if (Libc.GetPeerName(fd.Fd, address, &addressLength) == 0)
            {
                return true;
            }

            int errno = Errno.Last;
            if (errno == ENOTCONN)
            {
                return false; // still in progress
            }

            error = Errno.ToException(errno, Operation);
            return true;
        }

        protected override void ClearParameters()
        {
        }
    }
}
