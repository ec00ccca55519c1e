using System.Net.Sockets;
using Scheduler.IO;
using Scheduler.Native;
using static Scheduler.Native.LinuxConstants;

namespace Scheduler.Tests.IO;

/// <summary>
/// The socket options <see cref="ReactorSocket"/> promises, read back from the kernel: a TCP listener reuses its
/// address (a restarted server rebinds at once), and every TCP stream socket, connected or accepted, sends small writes
/// at once (no Nagle) and has the kernel report the bytes still queued with each read (TCP_INQ, the receive's drain
/// proof). The mutation run over <c>ReactorSocket.Create.cs</c> (session 51) found nothing that read them: a stream
/// socket configured like a Unix domain one (no option set at all) passed every test.
/// </summary>
public sealed class ReactorSocketOptionsTests
{
    [Fact]
    public async Task A_tcp_listener_reuses_its_address()
    {
        await using var io = new IoTestContext();
        using ReactorSocket listener = io.Listen();

        Option(listener, SOL_SOCKET, SO_REUSEADDR).Should().NotBe(0);
    }

    [Fact]
    public async Task Connected_and_accepted_tcp_sockets_have_Nagle_off_and_report_queued_bytes()
    {
        await using var io = new IoTestContext();
        using ReactorSocket listener = io.Listen();
        await io.RunOnPair(listener, (client, server) =>
        {
            foreach ((string which, ReactorSocket socket) in new[] { ("connected", client), ("accepted", server) })
            {
                Option(socket, IPPROTO_TCP, TCP_NODELAY).Should().NotBe(0, $"the {which} socket sends small writes at once");
                Option(socket, IPPROTO_TCP, TCP_INQ).Should().NotBe(0, $"the {which} socket's reads prove it drained");
            }

            return Task.CompletedTask;
        });
    }

    private static unsafe int Option(ReactorSocket socket, int level, int name)
    {
        using ReactorSocket.FdReference fd = socket.AddRef();
        int value = 0;
        uint length = sizeof(int);
        Libc.GetSockOpt(fd.Fd, level, name, &value, &length).Should().Be(0, "getsockopt({0}, {1}) succeeds", level, name);
        return value;
    }
}
