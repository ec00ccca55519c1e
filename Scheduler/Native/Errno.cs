using System.Net.Sockets;
using System.Runtime.InteropServices;
using static Scheduler.Native.LinuxConstants;

namespace Scheduler.Native;

/// <summary>Turns errno values into the <see cref="SocketException"/>s .NET users already handle.</summary>
internal static class Errno
{
    /// <summary>errno of the last failed P/Invoke on this thread.</summary>
    public static int Last => Marshal.GetLastPInvokeError();

    /// <summary>
    /// The <see cref="SocketError"/> .NET's own socket layer reports for <paramref name="errno"/> (its table, plus EPERM as
    /// AccessDenied, and EBADF as OperationAborted: with every call holding the fd, only a closed socket explains it).
    /// </summary>
    public static SocketError ToSocketError(int errno) => errno switch
    {
        0 => SocketError.Success,
        EINTR => SocketError.Interrupted,
        EAGAIN => SocketError.WouldBlock,
        EINPROGRESS => SocketError.InProgress,
        EALREADY => SocketError.AlreadyInProgress,
        EACCES or EPERM => SocketError.AccessDenied,
        EBADF => SocketError.OperationAborted,
        EINVAL => SocketError.InvalidArgument,
        EMFILE or ENFILE => SocketError.TooManyOpenSockets,
        ENOBUFS or ENOMEM => SocketError.NoBufferSpaceAvailable,
        EPIPE => SocketError.Shutdown,
        ESHUTDOWN => SocketError.Disconnecting,
        ENOTSOCK => SocketError.NotSocket,
        EPROTOTYPE => SocketError.ProtocolType,
        ENOPROTOOPT => SocketError.ProtocolOption,
        ESOCKTNOSUPPORT => SocketError.SocketNotSupported,
        EPFNOSUPPORT => SocketError.ProtocolFamilyNotSupported,
        EDESTADDRREQ => SocketError.DestinationAddressRequired,
        EFAULT => SocketError.Fault,
        ENODATA => SocketError.NoData,
        ENXIO => SocketError.HostNotFound,
        ECANCELED => SocketError.OperationAborted,
        EMSGSIZE => SocketError.MessageSize,
        EPROTONOSUPPORT => SocketError.ProtocolNotSupported,
        EOPNOTSUPP => SocketError.OperationNotSupported,
        EAFNOSUPPORT => SocketError.AddressFamilyNotSupported,
        EADDRINUSE => SocketError.AddressAlreadyInUse,
        EADDRNOTAVAIL or ENOENT => SocketError.AddressNotAvailable,
        ENETDOWN => SocketError.NetworkDown,
        ENETUNREACH => SocketError.NetworkUnreachable,
        ENETRESET => SocketError.NetworkReset,
        ECONNABORTED => SocketError.ConnectionAborted,
        ECONNRESET => SocketError.ConnectionReset,
        EISCONN => SocketError.IsConnected,
        ENOTCONN => SocketError.NotConnected,
        ETIMEDOUT => SocketError.TimedOut,
        ECONNREFUSED => SocketError.ConnectionRefused,
        EHOSTDOWN => SocketError.HostDown,
        EHOSTUNREACH => SocketError.HostUnreachable,
        _ => SocketError.SocketError,
    };

    /// <summary>A <see cref="SocketException"/> for <paramref name="errno"/>, its message naming the call that failed.</summary>
    public static SocketException ToException(int errno, string operation)
    {
        SocketError error = ToSocketError(errno);
        return new SocketException((int)error, $"{operation} failed: {error} (errno {errno}).");
    }

    /// <summary>Throws the <see cref="SocketException"/> for the last errno.</summary>
    public static void ThrowLast(string operation) => throw ToException(Last, operation);
}
