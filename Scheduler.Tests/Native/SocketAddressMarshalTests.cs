using System.Net;
using System.Net.Sockets;
using Scheduler.Native;

namespace Scheduler.Tests.Native;

/// <summary>The endpoint conversions under every socket call: what they accept, and how they refuse the rest.</summary>
public sealed class SocketAddressMarshalTests
{
    [Fact]
    public void Serialize_refuses_null_by_name_and_every_endpoint_it_cannot_carry_with_what_to_use_instead()
    {
        FluentActions.Invoking(() => SocketAddressMarshal.Serialize(null!)).Should().Throw<ArgumentNullException>().WithParameterName("endPoint");
        FluentActions.Invoking(() => SocketAddressMarshal.Serialize(new DnsEndPoint("localhost", 80)))
            .Should().Throw<ArgumentException>().WithParameterName("endPoint").WithMessage("DnsEndPoint is not supported: resolve the host name*");
        FluentActions.Invoking(() => SocketAddressMarshal.Serialize(new OtherEndPoint()))
            .Should().Throw<ArgumentException>().WithParameterName("endPoint").WithMessage("Endpoint type 'OtherEndPoint' is not supported; use IPEndPoint or UnixDomainSocketEndPoint.*");
    }

    [Fact]
    public void Native_addresses_round_trip_for_each_supported_family()
    {
        foreach (EndPoint endPoint in new EndPoint[]
        {
            new IPEndPoint(IPAddress.Loopback, 8080),
            new IPEndPoint(IPAddress.IPv6Loopback, 443),
            new UnixDomainSocketEndPoint("/tmp/some.sock"),
        })
        {
            SocketAddress address = SocketAddressMarshal.Serialize(endPoint);
            SocketAddressMarshal.ToEndPoint(endPoint.AddressFamily, address.Buffer.Span[..address.Size]).Should().Be(endPoint);
        }

        SocketAddressMarshal.ToNativeFamily(AddressFamily.InterNetwork).Should().Be(LinuxConstants.AF_INET);
        SocketAddressMarshal.ToNativeFamily(AddressFamily.InterNetworkV6).Should().Be(LinuxConstants.AF_INET6);
        SocketAddressMarshal.ToNativeFamily(AddressFamily.Unix).Should().Be(LinuxConstants.AF_UNIX);
    }

    [Fact]
    public void Other_address_families_are_refused_by_name()
    {
        FluentActions.Invoking(() => SocketAddressMarshal.ToNativeFamily(AddressFamily.AppleTalk))
            .Should().Throw<ArgumentException>().WithParameterName("family").WithMessage("Address family AppleTalk is not supported.*");
        FluentActions.Invoking(() => SocketAddressMarshal.ToEndPoint(AddressFamily.Ipx, new byte[16]))
            .Should().Throw<ArgumentException>().WithParameterName("family").WithMessage("Address family Ipx is not supported.*");
    }

    private sealed class OtherEndPoint : EndPoint
    {
        public override AddressFamily AddressFamily => AddressFamily.InterNetwork;
    }
}
