using System.Net.Sockets;
using Scheduler.IO;

namespace Scheduler.Tests.IO;

/// <summary>
/// Linux's accept passes on the error of a connection that failed while it waited in the backlog; accept(2) says to
/// treat those like EAGAIN. Failing AcceptAsync for one broken client would end a typical accept loop (found by a
/// review: only EINTR and ECONNABORTED were skipped). Loopback cannot produce these errors, so the classification is
/// pinned here by errno value (Linux x86-64 and arm64 numbers).
/// </summary>
public sealed class AcceptErrorTests
{
    [Theory]
    [InlineData(4, "EINTR")]
    [InlineData(103, "ECONNABORTED")]
    [InlineData(100, "ENETDOWN")]
    [InlineData(71, "EPROTO")]
    [InlineData(92, "ENOPROTOOPT")]
    [InlineData(112, "EHOSTDOWN")]
    [InlineData(64, "ENONET")]
    [InlineData(113, "EHOSTUNREACH")]
    [InlineData(95, "EOPNOTSUPP")]
    [InlineData(101, "ENETUNREACH")]
    public void Errors_of_one_failed_connection_are_skipped(int errno, string name) =>
        ReactorSocket.IsSkippableAcceptError(errno).Should().BeTrue("{0} is about the dequeued connection, not the listener", name);

    [Theory]
    [InlineData(11, "EAGAIN")]
    [InlineData(24, "EMFILE")]
    [InlineData(23, "ENFILE")]
    [InlineData(105, "ENOBUFS")]
    [InlineData(12, "ENOMEM")]
    [InlineData(22, "EINVAL")]
    [InlineData(9, "EBADF")]
    public void Errors_of_the_listener_or_the_process_are_not(int errno, string name) =>
        ReactorSocket.IsSkippableAcceptError(errno).Should().BeFalse("{0} is not about one connection", name);

    [Fact]
    public async Task An_accept_loop_keeps_accepting_after_a_client_reset_while_queued()
    {
        await using var io = new IoTestContext();
        using ReactorSocket listener = io.Listen();

        // A client that connects and resets before it is accepted, then a healthy one.
        using (var broken = new Socket(SocketType.Stream, ProtocolType.Tcp))
        {
            await broken.ConnectAsync(listener.LocalEndPoint!);
            broken.LingerState = new LingerOption(true, 0);
        }

        using var healthy = new Socket(SocketType.Stream, ProtocolType.Tcp);
        await healthy.ConnectAsync(listener.LocalEndPoint!);

        // Whatever Linux does with the reset one (hands it over, or drops it), the healthy one is accepted.
        using ReactorSocket first = await io.Run(() => listener.AcceptAsync().AsTask()).WaitAsync(IoTestContext.Timeout);
        first.Should().NotBeNull();
    }
}
