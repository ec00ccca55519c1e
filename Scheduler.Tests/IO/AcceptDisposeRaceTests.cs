using System.Diagnostics;
using System.Net.Sockets;
using Scheduler.IO;

namespace Scheduler.Tests.IO;

/// <summary>A listener disposed while connections pour in and an accept loop drains them in batches.</summary>
[Collection(nameof(IoStressGroup))]
public sealed class AcceptDisposeRaceTests
{
    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    public async Task Disposing_a_listener_mid_burst_leaves_no_accepted_connection_open(int seed)
    {
        await using var io = new IoTestContext();
        var random = new Random(seed);
        var elapsed = Stopwatch.StartNew();
        int rounds = 0;
        while (elapsed.Elapsed < TimeSpan.FromSeconds(1.5) || rounds < 5)
        {
            rounds++;
            ReactorSocket listener = io.Listen(backlog: 128);
            var accepted = new List<ReactorSocket>();
            Task acceptLoop = io.Run(async () =>
            {
                while (true)
                {
                    try
                    {
                        ReactorSocket socket = await listener.AcceptAsync();
                        lock (accepted)
                        {
                            accepted.Add(socket);
                        }
                    }
                    catch (ObjectDisposedException)
                    {
                        return;
                    }
                }
            });

            var clients = new Socket[40];
            var connects = new Task[clients.Length];
            for (int i = 0; i < clients.Length; i++)
            {
                clients[i] = IoTestContext.NewPlainSocket();
                connects[i] = clients[i].ConnectAsync(listener.LocalEndPoint!);
            }

            // Dispose somewhere in the burst: before, during or after the accept loop's batches.
            await Task.WhenAny(connects[random.Next(connects.Length)], Task.Delay(1000));
            if (random.Next(2) == 0)
            {
                await Task.Yield();
            }

            listener.Dispose();
            await acceptLoop.WaitAsync(IoTestContext.Timeout);
            lock (accepted)
            {
                accepted.ForEach(s => s.Dispose());
            }

            // Every connection the kernel completed must now be closed on our side (end of stream or reset): one
            // whose fd was accepted into a batch after the listener emptied it would stay open for ever.
            var outcomes = new Task[clients.Length];
            for (int i = 0; i < clients.Length; i++)
            {
                Socket client = clients[i];
                Task connect = connects[i];
                outcomes[i] = Task.Run(async () =>
                {
                    try
                    {
                        await connect;
                        while (await client.ReceiveAsync(new byte[16].AsMemory()) > 0)
                        {
                        }
                    }
                    catch (SocketException)
                    {
                    }
                });
            }

            // Bounded generously: a connection left open stays open for good, while 40 receives on a loaded machine's
            // ThreadPool can take seconds to see their ends.
            Task all = Task.WhenAll(outcomes);
            Task finished = await Task.WhenAny(all, Task.Delay(IoTestContext.Timeout));
            int open = outcomes.Count(o => !o.IsCompleted);
            foreach (Socket client in clients)
            {
                client.Dispose();
            }

            finished.Should().BeSameAs(all, $"round {rounds}: {open} connection(s) accepted by the kernel stayed open on our side");
            io.Reactor.RegisteredCount.Should().Be(0);
        }
    }
}
