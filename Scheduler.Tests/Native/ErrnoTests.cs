using System.Net.Sockets;
using System.Reflection;
using Scheduler.Native;

namespace Scheduler.Tests.Native;

/// <summary>
/// Errors reach callers as the <see cref="SocketError"/> that System.Net.Sockets reports for the same errno, so code that
/// handles a <see cref="Socket"/>'s errors handles ours. The oracle is the runtime's own table (internal, read by
/// reflection), for every errno Linux defines.
/// </summary>
public sealed class ErrnoTests
{
    // Linux's errno values run from 1 to 133 (EHWPOISON); 0 is success.
    private const int LastLinuxErrno = 133;

    [Fact]
    public void Every_errno_maps_to_the_SocketError_System_Net_Sockets_reports_for_it()
    {
        if (!OperatingSystem.IsLinux())
        {
            return; // errno values differ on other platforms; the reactor is Linux-only
        }

        Func<int, SocketError> runtimes = RuntimesMapping();
        var differences = new List<string>();
        for (int errno = 0; errno <= LastLinuxErrno; errno++)
        {
            SocketError expected = errno == LinuxConstants.ENOMEM ? SocketError.NoBufferSpaceAvailable : runtimes(errno);
            SocketError ours = Errno.ToSocketError(errno);
            if (ours != expected)
            {
                differences.Add($"errno {errno}: ours {ours}, System.Net.Sockets {expected}");
            }
        }

        differences.Should().BeEmpty();
    }

    [Fact]
    public void An_error_names_the_call_its_SocketError_and_the_errno()
    {
        SocketException error = Errno.ToException(LinuxConstants.ECONNREFUSED, "connect");
        error.SocketErrorCode.Should().Be(SocketError.ConnectionRefused);
        error.Message.Should().Be($"connect failed: ConnectionRefused (errno {LinuxConstants.ECONNREFUSED}).");

        Errno.ToSocketError(-1).Should().Be(SocketError.SocketError, "an unknown value is the generic error, never success");
        Errno.ToSocketError(int.MaxValue).Should().Be(SocketError.SocketError);
    }

    /// <summary>System.Net.Sockets' errno → <see cref="SocketError"/>: errno to the runtime's platform-neutral code, then to the socket error.</summary>
    private static Func<int, SocketError> RuntimesMapping()
    {
        const BindingFlags Static = BindingFlags.Static | BindingFlags.Public | BindingFlags.NonPublic;
        Assembly sockets = typeof(Socket).Assembly;
        MethodInfo? toPal = sockets.GetType("Interop+Sys")?.GetMethod("ConvertErrorPlatformToPal", Static);
        MethodInfo? toSocketError = sockets.GetType("System.Net.Sockets.SocketErrorPal")?.GetMethod("GetSocketErrorForNativeError", Static);
        toPal.Should().NotBeNull("System.Net.Sockets converts errno with Interop.Sys.ConvertErrorPlatformToPal (if the runtime renamed it, find the new one)");
        toSocketError.Should().NotBeNull("System.Net.Sockets maps errors with SocketErrorPal.GetSocketErrorForNativeError (if the runtime renamed it, find the new one)");
        return errno => (SocketError)toSocketError!.Invoke(null, [toPal!.Invoke(null, [errno])])!;
    }
}
