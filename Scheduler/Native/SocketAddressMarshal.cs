using System.Net;
using System.Net.Sockets;

namespace Scheduler.Native;

/// <summary>
/// Converts between <see cref="EndPoint"/>s and native <c>sockaddr</c> bytes. On Unix .NET's
/// <see cref="SocketAddress"/> already holds the platform's <c>sockaddr</c> layout, so
/// <see cref="EndPoint.Serialize"/> and <see cref="EndPoint.Create"/> do the marshalling.
/// </summary>
internal static class SocketAddressMarshal
{
    /// <summary>Large enough for <c>sockaddr_un</c> (110 bytes) and <c>sockaddr_in6</c> (28 bytes).</summary>
    public const int MaxAddressSize = 128;

    public static SocketAddress Serialize(EndPoint endPoint)
    {
        ArgumentNullException.ThrowIfNull(endPoint);
        if (endPoint is DnsEndPoint)
        {
            throw new ArgumentException("DnsEndPoint is not supported: resolve the host name (Dns.GetHostAddressesAsync) and pass an IPEndPoint.", nameof(endPoint));
        }

        if (endPoint is not (IPEndPoint or UnixDomainSocketEndPoint))
        {
            throw new ArgumentException($"Endpoint type '{endPoint.GetType().Name}' is not supported; use IPEndPoint or UnixDomainSocketEndPoint.", nameof(endPoint));
        }

        return endPoint.Serialize();
    }

    public static int ToNativeFamily(AddressFamily family) => family switch
    {
        AddressFamily.InterNetwork => LinuxConstants.AF_INET,
        AddressFamily.InterNetworkV6 => LinuxConstants.AF_INET6,
        AddressFamily.Unix => LinuxConstants.AF_UNIX,
        _ => throw new ArgumentException($"Address family {family} is not supported.", nameof(family)),
    };

    /// <summary>Builds an endpoint of <paramref name="family"/> from native <c>sockaddr</c> bytes.</summary>
    public static EndPoint? ToEndPoint(AddressFamily family, ReadOnlySpan<byte> native)
    {
        // The family first: SocketAddress itself refuses some families with a bare PlatformNotSupportedException.
        EndPoint template = family switch
        {
            AddressFamily.InterNetwork => new IPEndPoint(IPAddress.Any, 0),
            AddressFamily.InterNetworkV6 => new IPEndPoint(IPAddress.IPv6Any, 0),
            AddressFamily.Unix => new UnixDomainSocketEndPoint("x"),
            _ => throw new ArgumentException($"Address family {family} is not supported.", nameof(family)),
        };
        var address = new SocketAddress(family, Math.Max(native.Length, family == AddressFamily.Unix ? 2 : 16));
        native.CopyTo(address.Buffer.Span);
        address.Size = native.Length;
        return template.Create(address);
    }
}
