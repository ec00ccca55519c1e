using System.Diagnostics;
using System.Net.Sockets;
using Scheduler.IO;
using Scheduler.Tests.Scheduling;

namespace Scheduler.Tests.IO;

/// <summary>Stress and resource-bound tests; run alone so CPU measurements are not disturbed by other tests.</summary>
[CollectionDefinition(nameof(IoStressGroup), DisableParallelization = true)]
public sealed class IoStressGroup;

[Collection(nameof(IoStressGroup))]
public sealed class IoStressTests
{
    private static async Task AcceptEchoLoopAsync(ReactorSocket listener, List<Task> echoes)
    {
        while (true)
        {
            ReactorSocket accepted;
            try
            {
                accepted = await listener.AcceptAsync();
            }
            catch (ObjectDisposedException)
            {
                return;
            }

            var connection = ReactorConnection.Create(accepted);
            lock (echoes)
            {
                echoes.Add(EchoThenDisposeAsync(connection));
            }
        }
    }

    private static async Task EchoThenDisposeAsync(ReactorConnection connection)
    {
        try
        {
            await ReactorConnectionTests.EchoAsync(connection);
        }
        finally
        {
            await connection.DisposeAsync();
        }
    }

    [Fact]
    public async Task Two_hundred_concurrent_echo_clients_get_their_exact_bytes()
    {
        await using var io = new IoTestContext();
        using ReactorSocket listener = io.Listen(backlog: 1024);
        var echoes = new List<Task>();
        Task acceptLoop = io.Run(() => AcceptEchoLoopAsync(listener, echoes));

        var clients = new Task[200];
        for (int c = 0; c < clients.Length; c++)
        {
            int id = c;
            clients[c] = io.Run(async () =>
            {
                using ReactorSocket client = await ReactorSocket.ConnectAsync(io.Reactor, listener.LocalEndPoint!);
                var random = new Random(id);
                var received = new byte[16 * 1024];
                for (int round = 0; round < 10; round++)
                {
                    byte[] message = IoTestContext.Pattern(random.Next(1, 16 * 1024), (id * 100) + round);
                    Task<int> send = client.SendAsync(message).AsTask();
                    await IoTestContext.ReceiveExactlyAsync(client, received.AsMemory(0, message.Length));
                    await send;
                    if (!received.AsSpan(0, message.Length).SequenceEqual(message))
                    {
                        throw new InvalidDataException($"client {id} round {round}: echoed bytes differ");
                    }
                }

                client.Shutdown(SocketShutdown.Send);
                (await client.ReceiveAsync(received)).Should().Be(0);
            });
        }

        await Task.WhenAll(clients).WaitAsync(TimeSpan.FromSeconds(30));
        listener.Dispose();
        await acceptLoop;
        Task[] all;
        lock (echoes)
        {
            all = [.. echoes];
        }

        all.Should().HaveCount(200);
        await Task.WhenAll(all).WaitAsync(IoTestContext.Timeout);
    }

    [Fact]
    public async Task A_thousand_idle_connections_burn_almost_no_cpu()
    {
        await using var io = new IoTestContext(threadNamePrefix: "idle-cpu");
        using ReactorSocket listener = io.Listen(backlog: 2048);
        var servers = new List<ReactorConnection>();
        var clients = new List<ReactorSocket>();
        var pendingClientReads = new List<Task<int>>();
        try
        {
            await io.Run(async () =>
            {
                for (int i = 0; i < 1000; i++)
                {
                    (ReactorSocket client, ReactorSocket server) = await io.ConnectPairAsync(listener);
                    clients.Add(client);
                    servers.Add(ReactorConnection.Create(server)); // a pending receive inside its loop
                    pendingClientReads.Add(client.ReceiveAsync(new byte[16]).AsTask());
                }
            });
            io.Reactor.RegisteredCount.Should().Be(2001);

            // Let tiered JIT and the test host settle, then measure the CPU time of the threads this library
            // runs: the reactor thread and the scheduler's workers (the test host's own threads are not ours).
            await Task.Delay(1000);
            ThreadCpu.Snapshot before = ThreadCpu.Take();
            var wall = Stopwatch.StartNew();
            await Task.Delay(3000);
            IReadOnlyList<ThreadCpu.Usage> used = ThreadCpu.Since(before);
            static bool Ours(string name) => name == "IoReactor" || name.StartsWith("idle-cpu", StringComparison.Ordinal);
            double cpuFraction = ThreadCpu.Sum(used, Ours) / wall.Elapsed.TotalMilliseconds;
            used.Should().Contain(u => u.Name == "IoReactor");
            used.Should().Contain(u => u.Name.StartsWith("idle-cpu", StringComparison.Ordinal));
            cpuFraction.Should().BeLessThan(0.03, "idle connections must cost no CPU (measured {0:P2} of one core: {1})", cpuFraction, ThreadCpu.Describe(used.Where(u => Ours(u.Name))));
            pendingClientReads.Should().OnlyContain(t => !t.IsCompleted);
        }
        finally
        {
            foreach (ReactorConnection server in servers)
            {
                await server.DisposeAsync().AsTask().WithTimeout("DisposeAsync of an idle server connection", IoTestContext.Timeout);
            }

            clients.ForEach(c => c.Dispose());
        }

        await Task.WhenAll(pendingClientReads.Select(async t =>
        {
            try
            {
                await t;
            }
            catch (ObjectDisposedException)
            {
            }
        })).WithTimeout("The clients' pending receives (their sockets were disposed)", IoTestContext.Timeout);
        io.Reactor.RegisteredCount.Should().Be(1);
    }

    /// <summary>
    /// Thousands of short connections with pending receives are opened and closed (fd numbers and reactor slots are
    /// reused constantly) while long-lived connections carry tagged data: no byte may ever reach the wrong socket.
    /// </summary>
    [Fact]
    public async Task Fd_reuse_churn_never_delivers_a_byte_to_the_wrong_connection()
    {
        const int ChurnCycles = 10_000;
        const int ChurnLoops = 4;
        const int DataConnections = 8;

        await using var io = new IoTestContext();
        using ReactorSocket dataListener = io.Listen();
        var echoes = new List<Task>();
        Task acceptLoop = io.Run(() => AcceptEchoLoopAsync(dataListener, echoes));
        using var stop = new CancellationTokenSource();
        long dataMessages = 0;

        Task[] data = Enumerable.Range(0, DataConnections).Select(id => io.Run(async () =>
        {
            using ReactorSocket client = await ReactorSocket.ConnectAsync(io.Reactor, dataListener.LocalEndPoint!);
            var message = new byte[512];
            var echoed = new byte[512];
            int seq = 0;
            while (!stop.IsCancellationRequested)
            {
                message.AsSpan().Fill((byte)(id + 1));
                BitConverter.TryWriteBytes(message.AsSpan(0, 4), seq++);
                await client.SendAsync(message);
                await IoTestContext.ReceiveExactlyAsync(client, echoed);
                if (!echoed.AsSpan().SequenceEqual(message))
                {
                    throw new InvalidDataException($"data connection {id} received foreign bytes");
                }

                Interlocked.Increment(ref dataMessages);
            }

            client.Shutdown(SocketShutdown.Send);
        })).ToArray();

        int cycles = 0;
        Task[] churn = Enumerable.Range(0, ChurnLoops).Select(loop => io.Run(async () =>
        {
            using ReactorSocket listener = io.Listen();
            var random = new Random(loop);
            var buffer = new byte[64];
            for (int i = 0; i < ChurnCycles / ChurnLoops; i++)
            {
                (ReactorSocket client, ReactorSocket server) = await io.ConnectPairAsync(listener);
                byte tag = (byte)(0x80 | (i & 0x7F));
                ValueTask<int> serverReceive = server.ReceiveAsync(buffer);
                ValueTask<int> clientReceive = client.ReceiveAsync(new byte[64]);
                if (random.Next(2) == 0)
                {
                    await client.SendAsync(new[] { tag });
                }

                if (random.Next(2) == 0)
                {
                    client.Dispose();
                    server.Dispose();
                }
                else
                {
                    server.Dispose();
                    client.Dispose();
                }

                await ExpectNothingForeign(serverReceive, buffer, tag);
                await ExpectNothingForeign(clientReceive, null, 0);
                Interlocked.Increment(ref cycles);
            }
        })).ToArray();

        await Task.WhenAll(churn).WaitAsync(TimeSpan.FromSeconds(45));
        await stop.CancelAsync();
        await Task.WhenAll(data).WaitAsync(IoTestContext.Timeout);
        dataListener.Dispose();
        await acceptLoop;
        Task[] all;
        lock (echoes)
        {
            all = [.. echoes];
        }

        await Task.WhenAll(all).WaitAsync(IoTestContext.Timeout);
        cycles.Should().Be(ChurnCycles);
        Interlocked.Read(ref dataMessages).Should().BeGreaterThan(0);
        io.Reactor.RegisteredCount.Should().Be(0);
    }

    private static async Task ExpectNothingForeign(ValueTask<int> receive, byte[]? buffer, byte tag)
    {
        int n;
        try
        {
            n = await receive;
        }
        catch (ObjectDisposedException)
        {
            return;
        }
        catch (SocketException)
        {
            return;
        }

        if (n > 0 && (buffer is null || n != 1 || buffer[0] != tag))
        {
            throw new InvalidDataException($"a churn socket received {n} byte(s) that were not its own");
        }
    }
}

[Collection(nameof(IoStressGroup))]
public sealed class IoAllocationTests
{
    [Fact]
    public async Task Steady_state_echo_allocates_almost_nothing_per_message()
    {
        await using var io = new IoTestContext();
        using ReactorSocket listener = io.Listen();
        (ReactorSocket client, ReactorSocket server) = await io.ConnectPairOnSchedulerAsync(listener);
        using (client)
        using (server)
        {
            // Sequential round trips, so the run time is latency-bound: 1 s on an idle 2-core machine, ~10 s beside four
            // busy processes. The timeout only catches a hang; this test is about bytes, not speed.
            const int Messages = 10_000;
            TimeSpan timeout = TimeSpan.FromSeconds(90);
            Task echo = io.Run(async () =>
            {
                var buffer = new byte[256];
                while (true)
                {
                    int n = await server.ReceiveAsync(buffer);
                    if (n == 0)
                    {
                        return;
                    }

                    await server.SendAsync(buffer.AsMemory(0, n));
                }
            }, timeout);

            double bytesPerMessage = await io.Run(async () =>
            {
                var message = new byte[64];
                var reply = new byte[64];
                long before = 0;
                for (int i = 0; i < Messages * 2; i++)
                {
                    if (i == Messages)
                    {
                        before = GC.GetTotalAllocatedBytes(precise: true); // after warm-up
                    }

                    await client.SendAsync(message);
                    int total = 0;
                    while (total < reply.Length)
                    {
                        total += await client.ReceiveAsync(reply.AsMemory(total));
                    }
                }

                return (GC.GetTotalAllocatedBytes(precise: true) - before) / (double)Messages;
            }, timeout);

            client.Shutdown(SocketShutdown.Send);
            await echo;
            // Both ends, awaits that go pending included; generous margin for queue segments and runtime noise.
            bytesPerMessage.Should().BeLessThan(32, "receives and sends reuse one operation per direction");
        }
    }
}
