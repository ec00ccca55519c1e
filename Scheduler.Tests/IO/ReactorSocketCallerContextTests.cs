using System.Net.Sockets;
using Scheduler.IO;
using Scheduler.Tests.Scheduling;

namespace Scheduler.Tests.IO;

/// <summary>
/// A socket's operations called from an application thread whose single-threaded <see cref="SynchronizationContext"/>
/// is blocked until they finish, and awaited there with <c>ConfigureAwait(false)</c>: nothing of the library's own
/// (a connect's completion, the pauses of a connect waiting for a full Unix domain backlog) may be posted there, where
/// it would never run.
/// </summary>
public sealed class ReactorSocketCallerContextTests
{
    [Fact]
    public async Task Connect_accept_send_and_receive_awaited_without_the_context_never_post_to_it()
    {
        await using var io = new IoTestContext();
        using ReactorSocket listener = io.Listen();
        var blocked = new BlockedSynchronizationContext();
        ReactorSocket? client = null;
        ReactorSocket? server = null;
        Task accept = blocked.Start(async () => server = await listener.AcceptAsync().ConfigureAwait(false));
        Task connect = blocked.Start(async () => client = await ReactorSocket.ConnectAsync(io.Reactor, listener.LocalEndPoint!).ConfigureAwait(false));
        await Task.WhenAll(accept, connect).WithTimeout("accept and connect", IoTestContext.Timeout);
        using (client)
        using (server)
        {
            var one = new byte[1];
            Task receive = blocked.Start(async () => (await server!.ReceiveAsync(one).ConfigureAwait(false)).Should().Be(1));
            Task send = blocked.Start(async () => await client!.SendAsync(new byte[] { 42 }).ConfigureAwait(false));
            await Task.WhenAll(receive, send).WithTimeout("receive and send", IoTestContext.Timeout);
            one[0].Should().Be(42);
        }

        blocked.Posts.Should().Be(0);
    }

    [Fact]
    public async Task A_connect_waiting_for_a_full_Unix_backlog_never_posts_its_pauses_to_the_callers_context()
    {
        using var backlog = new UnixBacklogPath("ctx-backlog");
        var blocked = new BlockedSynchronizationContext();
        await using var io = new IoTestContext();
        using ReactorSocket listener = io.Listen(backlog.EndPoint, backlog: 1);
        // A Unix domain connect with room completes within its call, so the call's result tells which one waits; a
        // 200-ms window stood for that, which a connect with room, run late on a loaded machine, could outlast.
        Task<ReactorSocket>? waiting = null;
        for (int i = 0; i < 8 && waiting is null; i++)
        {
            Task<ReactorSocket>? connect = null;
            blocked.Run(() => connect = ConnectWithoutContextAsync(io.Reactor, backlog.EndPoint));
            if (connect!.IsCompleted)
            {
                backlog.Clients.Add(await connect);
            }
            else
            {
                waiting = connect;
            }
        }

        waiting.Should().NotBeNull("a connect to a full backlog waits, pausing again and again");
        await Task.Delay(200); // the waiting connect's pauses (1 ms, then 2, 4, ...) come and go meanwhile
        blocked.Posts.Should().Be(0, "the connect's pauses resume off the caller's context");
        using ReactorSocket first = await io.Run(async () => await listener.AcceptAsync());
        using ReactorSocket client = await waiting!.WaitAsync(IoTestContext.Timeout);
        blocked.Posts.Should().Be(0);
    }

    private static async Task<ReactorSocket> ConnectWithoutContextAsync(IoReactor reactor, UnixDomainSocketEndPoint endPoint) =>
        await ReactorSocket.ConnectAsync(reactor, endPoint).ConfigureAwait(false);
}
