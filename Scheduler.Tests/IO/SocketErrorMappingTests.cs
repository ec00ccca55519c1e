using System.Net.Sockets;
using Scheduler.IO;
using Scheduler.Native;

namespace Scheduler.Tests.IO;

/// <summary>errno values reach callers as the <see cref="SocketError"/> System.Net.Sockets reports for them.</summary>
public sealed class SocketErrorMappingTests
{
    [Fact]
    public async Task A_stream_connect_to_a_datagram_path_fails_with_ProtocolType_as_System_Net_Sockets_does()
    {
        // Linux refuses it with EPROTOTYPE (the socket at the path is of another type).
        string path = Path.Combine(Path.GetTempPath(), $"dgram-{Guid.NewGuid():N}.sock");
        try
        {
            using var datagram = new Socket(AddressFamily.Unix, SocketType.Dgram, ProtocolType.Unspecified);
            datagram.Bind(new UnixDomainSocketEndPoint(path));
            using var plain = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
            SocketError expected = plain.Invoking(s => s.Connect(new UnixDomainSocketEndPoint(path)))
                .Should().Throw<SocketException>().Which.SocketErrorCode;
            expected.Should().Be(SocketError.ProtocolType);

            await using var io = new IoTestContext();
            Func<Task> connect = async () => await ReactorSocket.ConnectAsync(io.Reactor, new UnixDomainSocketEndPoint(path));
            (await connect.Should().ThrowAsync<SocketException>()).Which.SocketErrorCode.Should().Be(expected);
        }
        finally
        {
            File.Delete(path);
        }
    }

    [Theory]
    [InlineData(14, SocketError.Fault)] // EFAULT
    [InlineData(61, SocketError.NoData)] // ENODATA
    [InlineData(6, SocketError.HostNotFound)] // ENXIO
    [InlineData(89, SocketError.DestinationAddressRequired)] // EDESTADDRREQ
    [InlineData(91, SocketError.ProtocolType)] // EPROTOTYPE
    [InlineData(92, SocketError.ProtocolOption)] // ENOPROTOOPT
    [InlineData(94, SocketError.SocketNotSupported)] // ESOCKTNOSUPPORT
    [InlineData(96, SocketError.ProtocolFamilyNotSupported)] // EPFNOSUPPORT
    [InlineData(108, SocketError.Disconnecting)] // ESHUTDOWN
    [InlineData(125, SocketError.OperationAborted)] // ECANCELED
    public void Errnos_map_as_System_Net_Sockets_maps_them(int errno, SocketError expected)
    {
        Errno.ToSocketError(errno).Should().Be(expected);
        Errno.ToException(errno, "op").Message.Should().Contain($"errno {errno}");
    }
}
