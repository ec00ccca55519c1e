using System.Net.Sockets;
using Scheduler.IO;

namespace Scheduler.Tests.IO;

/// <summary>
/// A listener disposed at the exact moment an accept attempt that already passed its disposed check is about to drain
/// the kernel's accept queue: <see cref="ReactorSocket.RaceHookForTests"/> holds the attempt before the queue lock and
/// lets it go only once <see cref="ReactorSocket.Dispose"/> has closed the queued connections, before it closes the fd.
/// </summary>
[Collection(nameof(RaceHookGroup))]
public sealed class AcceptDisposeWindowTests
{
    private static readonly TimeSpan Bound = TimeSpan.FromSeconds(10);

    [Fact]
    public async Task An_accept_batch_drained_after_the_listener_closed_its_queue_leaves_no_connection_open()
    {
        await using var io = new IoTestContext();
        ReactorSocket listener = io.Listen();
        var clients = new Socket[8];
        for (int i = 0; i < clients.Length; i++)
        {
            clients[i] = IoTestContext.NewPlainSocket();
            await clients[i].ConnectAsync(listener.LocalEndPoint!).WaitAsync(Bound);
        }

        using var attemptHeld = new ManualResetEventSlim();
        using var attemptGo = new ManualResetEventSlim();
        Task<ReactorSocket>? accept = null;
        ReactorSocket.RaceHookForTests = (socket, point) =>
        {
            if (!ReferenceEquals(socket, listener))
            {
                return;
            }

            if (point == "accept-attempt" && !attemptHeld.IsSet)
            {
                attemptHeld.Set();
                attemptGo.Wait(Bound);
            }
            else if (point == "dispose-queue-closed")
            {
                // The attempt now drains with the fd still open; let it finish before Dispose closes the fd.
                attemptGo.Set();
                SpinWait.SpinUntil(() => Volatile.Read(ref accept)?.IsCompleted == true, Bound);
            }
        };

        try
        {
            // Not on the scheduler: the attempt runs synchronously on this pool thread and is held there.
            Volatile.Write(ref accept, Task.Run(async () => await listener.AcceptAsync()));
            attemptHeld.Wait(Bound).Should().BeTrue("the accept attempt reaches the hook");
            listener.Dispose();
        }
        finally
        {
            ReactorSocket.RaceHookForTests = null;
        }

        // Whether the attempt won a connection (the caller owns it) or failed as disposed, nothing else may stay open.
        try
        {
            (await accept.WaitAsync(Bound)).Dispose();
        }
        catch (ObjectDisposedException)
        {
        }

        try
        {
            Task[] outcomes = clients.Select(client => Task.Run(async () =>
            {
                try
                {
                    while (await client.ReceiveAsync(new byte[16].AsMemory()) > 0)
                    {
                    }
                }
                catch (SocketException)
                {
                }
            })).ToArray();
            // Bounded generously: a connection left open stays open for good, while a loaded machine's ThreadPool can take
            // seconds to run the receives that see the ends.
            Task all = Task.WhenAll(outcomes);
            Task finished = await Task.WhenAny(all, Task.Delay(IoTestContext.Timeout));
            finished.Should().BeSameAs(all, $"{outcomes.Count(o => !o.IsCompleted)} connection(s) accepted into the batch stayed open on our side");
            io.Reactor.RegisteredCount.Should().Be(0);
        }
        finally
        {
            foreach (Socket client in clients)
            {
                client.Dispose();
            }
        }
    }
}
