using System.Buffers;
using System.IO.Pipelines;
using System.Net.Sockets;
using Scheduler.IO;
using Scheduler.Tests.Scheduling;
using Scheduler.Timers;

// These tests hold ValueTasks on purpose (operations racing their cancellation).
#pragma warning disable CA2012

namespace Scheduler.Tests.IO;

/// <summary>
/// Adversarial scenarios for socket and pipe operations bounded by timeouts on <see cref="IoReactor.Timers"/>:
/// cancellation arriving a tick before, with or after the data, the peer's end or a reset (nothing lost, duplicated or
/// hidden); one token shared by many sockets; connections, connects and accepts churning with short timeouts (no fd,
/// registration or timer left); timer callbacks that dispose sockets or the reactor; cancellation racing the socket's
/// and the reactor's disposal (only ObjectDisposedException or OperationCanceledException); a busy reactor still
/// firing timeouts; tokens of disposed sources; and a Unix domain connect waiting for backlog room while the user
/// disposes the reactor's wheel. Every wait is bounded. In the stress group: several tests count the process's
/// socket descriptors.
/// </summary>
[Collection(nameof(IoStressGroup))]
public sealed class AdversarialTimeoutTests
{
    private static readonly TimeSpan Guard = TimeSpan.FromSeconds(10);

    private static string TempSocketPath() => Path.Combine(Path.GetTempPath(), $"advt-{Guid.NewGuid():N}.sock");

    /// <summary>Awaits <paramref name="operation"/> and reports how it ended: its result, or the exception's type.</summary>
    private static async Task<(int Bytes, Exception? Error)> Outcome(ValueTask<int> operation)
    {
        try
        {
            return (await operation, null);
        }
        catch (Exception e)
        {
            return (-1, e);
        }
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task A_shared_timeout_firing_in_the_same_tick_as_the_data_on_many_sockets_loses_and_duplicates_no_byte(bool unixDomain)
    {
        string path = TempSocketPath();
        await using var io = new IoTestContext();
        using ReactorSocket listener = unixDomain ? io.Listen(new UnixDomainSocketEndPoint(path)) : io.Listen();
        TimerWheel wheel = io.Reactor.Timers;
        const int Pairs = 32;
        const int Rounds = 25;
        const int MessageLength = 8;

        var pairs = new List<(ReactorSocket Client, ReactorSocket Server)>();
        try
        {
            for (int i = 0; i < Pairs; i++)
            {
                pairs.Add(await io.ConnectPairOnSchedulerAsync(listener));
            }

            var received = new List<byte>[Pairs];
            for (int i = 0; i < Pairs; i++)
            {
                received[i] = new List<byte>();
            }

            int cancelled = 0;
            int raced = 0;
            await io.Run(async () =>
            {
                var random = new Random(17);
                for (int round = 0; round < Rounds; round++)
                {
                    TimeSpan due = TimeSpan.FromMicroseconds(random.Next(1_500, 4_000));
                    using var timeout = new CancellationTokenSource(due, wheel);

                    // The data, sent by a timer of the same wheel due a tick before, in the same tick as, or a tick after the timeout.
                    int sendRound = round;
                    using var sent = new ManualResetEventSlim();
                    using ITimer sender = wheel.CreateTimer(_ =>
                    {
                        for (int i = 0; i < Pairs; i++)
                        {
                            // Complete synchronously: 8 bytes into an empty socket buffer.
                            pairs[i].Client.SendAsync(Message(sendRound, i)).AsTask().GetAwaiter().GetResult();
                        }

                        sent.Set();
                    }, null, due + TimeSpan.FromMilliseconds((round % 3) - 1), Timeout.InfiniteTimeSpan); // a tick before, with, after

                    var buffers = new byte[Pairs][];
                    var receives = new Task<(int Bytes, Exception? Error)>[Pairs];
                    for (int i = 0; i < Pairs; i++)
                    {
                        buffers[i] = new byte[64];
                        receives[i] = Outcome(pairs[i].Server.ReceiveAsync(buffers[i], timeout.Token));
                    }

                    await Task.WhenAll(receives).WaitAsync(Guard);
                    (await Task.Run(() => sent.Wait(Guard))).Should().BeTrue("the sending timer fires");
                    for (int i = 0; i < Pairs; i++)
                    {
                        (int bytes, Exception? error) = receives[i].Result;
                        if (error is null)
                        {
                            bytes.Should().BeGreaterThan(0);
                            received[i].AddRange(buffers[i].AsSpan(0, bytes).ToArray());
                        }
                        else
                        {
                            error.Should().BeAssignableTo<OperationCanceledException>($"pair {i} round {round}: only the data or the cancellation may end it")
                                .Which.CancellationToken.Should().Be(timeout.Token);
                            cancelled++;
                        }
                    }

                    // The rest of this round's message, with a generous bound: a cancelled receive consumed nothing.
                    for (int i = 0; i < Pairs; i++)
                    {
                        int expected = (round + 1) * MessageLength;
                        while (received[i].Count < expected)
                        {
                            var rest = new byte[expected - received[i].Count];
                            using var generous = new CancellationTokenSource(Guard, wheel);
                            int n = await pairs[i].Server.ReceiveAsync(rest, generous.Token);
                            n.Should().BeGreaterThan(0);
                            received[i].AddRange(rest.AsSpan(0, n).ToArray());
                            raced++;
                        }
                    }
                }
            }, TimeSpan.FromSeconds(60));

            for (int i = 0; i < Pairs; i++)
            {
                byte[] expected = Enumerable.Range(0, Rounds).SelectMany(r => Message(r, i)).ToArray();
                received[i].Should().Equal(expected, $"pair {i} carries every message once, in order");
            }

            // Nothing duplicated past the end either: an immediate timeout finds the socket empty.
            await io.Run(async () =>
            {
                for (int i = 0; i < Pairs; i++)
                {
                    using var quick = new CancellationTokenSource(TimeSpan.FromMilliseconds(2), wheel);
                    Func<Task> extra = async () => await pairs[i].Server.ReceiveAsync(new byte[16], quick.Token);
                    await extra.Should().ThrowAsync<OperationCanceledException>();
                }
            });
            (cancelled + raced).Should().BeGreaterThan(0, "some receives met the timeout (a check of the test itself)");
        }
        finally
        {
            pairs.ForEach(p =>
            {
                p.Client.Dispose();
                p.Server.Dispose();
            });
            File.Delete(path);
        }

        static byte[] Message(int round, int pair) => BitConverter.GetBytes((round * 1_000L) + pair);
    }

    [Fact]
    public async Task A_timeout_in_the_same_tick_as_the_peers_end_or_reset_never_hides_the_end_or_the_reset()
    {
        await using var io = new IoTestContext();
        using ReactorSocket listener = io.Listen(backlog: 256);
        TimerWheel wheel = io.Reactor.Timers;
        const int Pairs = 120;
        byte[] message = [1, 2, 3, 4, 5];
        var pairs = new List<(ReactorSocket Client, ReactorSocket Server)>();
        try
        {
            for (int i = 0; i < Pairs; i++)
            {
                pairs.Add(await io.ConnectPairOnSchedulerAsync(listener));
            }

            await io.Run(async () =>
            {
                // Unread input on the odd clients: their Dispose resets the connection.
                for (int i = 1; i < Pairs; i += 2)
                {
                    await pairs[i].Server.SendAsync(new byte[] { 9 });
                }
            });

            var random = new Random(77);
            var timers = new List<ITimer>();
            var sources = new List<CancellationTokenSource>();
            var outcomes = new Task<string>[Pairs];
            try
            {
                outcomes = await io.Run(() => Task.FromResult(Enumerable.Range(0, Pairs).Select(i =>
                {
                    TimeSpan due = TimeSpan.FromMicroseconds(random.Next(1_300, 4_000));
                    var timeout = new CancellationTokenSource(due, wheel);

                    // The peer acts a tick before, in the same tick as, or a tick after the timeout.
                    TimeSpan at = due + TimeSpan.FromMilliseconds(random.Next(-1, 2));
                    sources.Add(timeout);
                    (ReactorSocket client, ReactorSocket server) = pairs[i];
                    timers.Add(wheel.CreateTimer(_ =>
                    {
                        if (i % 2 == 0)
                        {
                            client.SendAsync(message).AsTask().GetAwaiter().GetResult();
                            client.Shutdown(SocketShutdown.Send);
                        }
                        else
                        {
                            client.Dispose();
                        }
                    }, null, at, Timeout.InfiniteTimeSpan));
                    return DrainAsync(server, timeout.Token, i);
                }).ToArray()));

                await Task.WhenAll(outcomes).WaitAsync(TimeSpan.FromSeconds(30));
            }
            finally
            {
                timers.ForEach(t => t.Dispose());
                sources.ForEach(s => s.Dispose());
            }

            for (int i = 0; i < Pairs; i++)
            {
                outcomes[i].Result.Should().Be(i % 2 == 0 ? "1,2,3,4,5|end" : "reset", $"pair {i}");
            }
        }
        finally
        {
            pairs.ForEach(p =>
            {
                p.Client.Dispose();
                p.Server.Dispose();
            });
        }

        // The first receive races the timeout; the rest read to the end with a generous bound.
        async Task<string> DrainAsync(ReactorSocket server, CancellationToken racing, int pair)
        {
            var got = new List<byte>();
            var buffer = new byte[16];
            bool first = true;
            while (true)
            {
                using var generous = new CancellationTokenSource(Guard, wheel);
                int n;
                try
                {
                    n = await server.ReceiveAsync(buffer, first ? racing : generous.Token);
                }
                catch (OperationCanceledException) when (first && racing.IsCancellationRequested)
                {
                    first = false;
                    continue;
                }
                catch (SocketException e) when (e.SocketErrorCode == SocketError.ConnectionReset)
                {
                    return got.Count == 0 ? "reset" : $"{string.Join(',', got)}|reset";
                }
                catch (OperationCanceledException) when (generous.IsCancellationRequested)
                {
                    return $"{string.Join(',', got)}|hung (pair {pair})";
                }

                first = false;
                if (n == 0)
                {
                    return $"{string.Join(',', got)}|end";
                }

                got.AddRange(buffer.AsSpan(0, n).ToArray());
            }
        }
    }

    [Fact]
    public async Task A_pipe_read_timing_out_in_the_same_tick_as_a_reset_or_an_end_leaves_that_outcome_to_the_next_read()
    {
        await using var io = new IoTestContext();
        using ReactorSocket listener = io.Listen(backlog: 256);
        TimerWheel wheel = io.Reactor.Timers;
        const int Pairs = 60;
        var clients = new List<ReactorSocket>();
        var connections = new List<ReactorConnection>();
        var timers = new List<ITimer>();
        try
        {
            for (int i = 0; i < Pairs; i++)
            {
                (ReactorSocket client, ReactorSocket server) = await io.ConnectPairOnSchedulerAsync(listener);
                clients.Add(client);
                connections.Add(ReactorConnection.Create(server));
                if (i % 2 == 1)
                {
                    // Unread input on the odd clients (queued there: an empty receive waits for it without reading it):
                    // their Dispose resets the connection.
                    ReactorConnection connection = connections[^1];
                    await io.Run(async () =>
                    {
                        await connection.Output.WriteAsync(new byte[] { 9 });
                        (await client.ReceiveAsync(Memory<byte>.Empty).AsTask().WaitAsync(Guard)).Should().Be(0);
                    });
                }
            }

            var random = new Random(88);
            string[] outcomes = await io.Run(() => Task.WhenAll(Enumerable.Range(0, Pairs).Select(async i =>
            {
                TimeSpan due = TimeSpan.FromMicroseconds(random.Next(1_300, 4_000));
                using var timeout = new CancellationTokenSource(due, wheel);
                TimeSpan at = due + TimeSpan.FromMilliseconds(random.Next(-1, 2)); // a tick before, the same tick, a tick after
                ReactorSocket client = clients[i];
                lock (timers)
                {
                    timers.Add(wheel.CreateTimer(_ =>
                    {
                        if (i % 2 == 0)
                        {
                            client.SendAsync(new byte[] { 1, 2, 3 }).AsTask().GetAwaiter().GetResult();
                            client.Shutdown(SocketShutdown.Send);
                        }
                        else
                        {
                            client.Dispose();
                        }
                    }, null, at, Timeout.InfiniteTimeSpan));
                }

                PipeReader input = connections[i].Input;
                var got = new List<byte>();
                bool first = true;
                while (true)
                {
                    using var generous = new CancellationTokenSource(Guard, wheel);
                    ReadResult result;
                    try
                    {
                        result = await input.ReadAsync(first ? timeout.Token : generous.Token);
                    }
                    catch (OperationCanceledException) when (first && timeout.IsCancellationRequested)
                    {
                        first = false;
                        continue;
                    }
                    catch (SocketException e) when (e.SocketErrorCode == SocketError.ConnectionReset)
                    {
                        return got.Count == 0 ? "reset" : $"{string.Join(',', got)}|reset";
                    }
                    catch (OperationCanceledException) when (generous.IsCancellationRequested)
                    {
                        return $"{string.Join(',', got)}|hung";
                    }

                    first = false;
                    got.AddRange(result.Buffer.ToArray());
                    input.AdvanceTo(result.Buffer.End);
                    if (result.IsCompleted)
                    {
                        return $"{string.Join(',', got)}|end";
                    }
                }
            }).ToArray()), TimeSpan.FromSeconds(30));

            for (int i = 0; i < Pairs; i++)
            {
                outcomes[i].Should().Be(i % 2 == 0 ? "1,2,3|end" : "reset", $"connection {i}");
            }
        }
        finally
        {
            timers.ForEach(t => t.Dispose());
            clients.ForEach(c => c.Dispose());
            foreach (ReactorConnection connection in connections)
            {
                await connection.DisposeAsync().AsTask().WaitAsync(Guard);
            }
        }
    }

    [Fact]
    public async Task A_wheel_timer_disposing_a_connections_socket_as_its_read_times_out_ends_Input_with_ObjectDisposed_and_DisposeAsync_returns()
    {
        await using var io = new IoTestContext();
        using ReactorSocket listener = io.Listen(backlog: 256);
        TimerWheel wheel = io.Reactor.Timers;
        const int Pairs = 40;
        var clients = new List<ReactorSocket>();
        var connections = new List<ReactorConnection>();
        var timers = new List<ITimer>();
        try
        {
            for (int i = 0; i < Pairs; i++)
            {
                (ReactorSocket client, ReactorSocket server) = await io.ConnectPairOnSchedulerAsync(listener);
                clients.Add(client);
                connections.Add(ReactorConnection.Create(server));
            }

            var random = new Random(99);
            string[] outcomes = await io.Run(() => Task.WhenAll(Enumerable.Range(0, Pairs).Select(async i =>
            {
                TimeSpan due = TimeSpan.FromMicroseconds(random.Next(1_300, 4_000));
                using var timeout = new CancellationTokenSource(due, wheel);
                lock (timers)
                {
                    timers.Add(wheel.CreateTimer(
                        s => ((ReactorSocket)s!).Dispose(), connections[i].Socket, due + TimeSpan.FromMilliseconds(random.Next(-1, 2)), Timeout.InfiniteTimeSpan));
                }

                PipeReader input = connections[i].Input;
                bool first = true;
                while (true)
                {
                    using var generous = new CancellationTokenSource(Guard, wheel);
                    try
                    {
                        ReadResult result = await input.ReadAsync(first ? timeout.Token : generous.Token);
                        input.AdvanceTo(result.Buffer.End);
                        if (result.IsCompleted)
                        {
                            return "end";
                        }
                    }
                    catch (OperationCanceledException) when (first && timeout.IsCancellationRequested)
                    {
                    }
                    catch (ObjectDisposedException)
                    {
                        return "disposed";
                    }
                    catch (OperationCanceledException) when (generous.IsCancellationRequested)
                    {
                        return "hung";
                    }
                    catch (Exception e)
                    {
                        return e.GetType().Name;
                    }

                    first = false;
                }
            }).ToArray()), TimeSpan.FromSeconds(30));

            outcomes.Should().AllBe("disposed", "the socket under Input was disposed: ObjectDisposedException, as for its own receives");
        }
        finally
        {
            timers.ForEach(t => t.Dispose());
            foreach (ReactorConnection connection in connections)
            {
                await connection.DisposeAsync().AsTask().WaitAsync(Guard);
            }

            clients.ForEach(c => c.Dispose());
        }
    }

    [Fact]
    public async Task A_wheel_timer_disposing_the_socket_under_a_paused_Output_releases_the_pending_flush_and_DisposeAsync_returns()
    {
        await using var io = new IoTestContext();
        TimerWheel wheel = io.Reactor.Timers;
        (ReactorConnection connection, ReactorSocket client) = await io.ConnectionPairAsync();
        using (client)
        {
            // The client never reads: the send loop parks on a full socket and the pipe pauses the writer.
            Task<FlushResult> pending = await io.WriteUntilPaused(connection);
            pending.IsCompleted.Should().BeFalse();

            using ITimer killer = wheel.CreateTimer(s => ((ReactorSocket)s!).Dispose(), connection.Socket, TimeSpan.FromMilliseconds(5), Timeout.InfiniteTimeSpan);
            Exception? error = await Record.ExceptionAsync(async () =>
            {
                FlushResult result = await pending.WaitAsync(Guard);
                result.IsCompleted.Should().BeTrue("the send loop ended: nobody reads Output any more");
            });
            error.Should().Match<Exception?>(e => e == null || e is ObjectDisposedException, $"the paused flush ended with {error}");

            await connection.DisposeAsync().AsTask().WaitAsync(Guard);
            FluentActions.Invoking(() => connection.Socket.LocalEndPoint).Should().NotThrow();
            connection.Socket.LocalEndPoint.Should().BeNull("the socket is disposed");
        }
    }

    [Fact]
    public async Task Output_flushes_timing_out_under_backpressure_still_deliver_every_byte_once_in_order()
    {
        await using var io = new IoTestContext();
        TimerWheel wheel = io.Reactor.Timers;
        using ReactorSocket listener = io.Listen();
        (ReactorSocket client, ReactorSocket server) = await io.ConnectPairOnSchedulerAsync(listener);
        var options = io.Bounded(64 << 10, 32 << 10);
        await using var connection = ReactorConnection.Create(server, outputOptions: options);
        using (client)
        {
            byte[] stream = IoTestContext.Pattern(3 << 20, 21);
            Task<byte[]> reader = Task.Run(async () =>
            {
                // A slow reader: small reads with pauses, so the pipe's writer is held back again and again.
                var random = new Random(4);
                var all = new List<byte>(stream.Length);
                var buffer = new byte[32 << 10];
                int n;
                while ((n = await client.ReceiveAsync(buffer.AsMemory(0, random.Next(1, buffer.Length)))) > 0)
                {
                    all.AddRange(buffer.AsSpan(0, n).ToArray());
                    if (random.Next(8) == 0)
                    {
                        await wheel.DelayAsync(TimeSpan.FromMicroseconds(random.Next(0, 3_000)));
                    }
                }

                return all.ToArray();
            });

            int timeouts = 0;
            await io.Run(async () =>
            {
                var random = new Random(6);
                int offset = 0;
                while (offset < stream.Length)
                {
                    int length = Math.Min(random.Next(1, 40_000), stream.Length - offset);
                    stream.AsSpan(offset, length).CopyTo(connection.Output.GetSpan(length));
                    connection.Output.Advance(length);
                    offset += length;
                    using var timeout = new CancellationTokenSource(TimeSpan.FromMicroseconds(random.Next(0, 2_000)), wheel);
                    try
                    {
                        await connection.Output.FlushAsync(timeout.Token);
                    }
                    catch (OperationCanceledException)
                    {
                        timeouts++;
                    }
                }

                await connection.Output.CompleteAsync();
            }, TimeSpan.FromSeconds(60));

            byte[] received = await reader.WaitAsync(TimeSpan.FromSeconds(30));
            received.Length.Should().Be(stream.Length);
            received.Should().Equal(stream);
            timeouts.Should().BeGreaterThan(0, "some flushes met their timeout (a check of the test itself)");
        }
    }

    [Fact]
    public async Task Receive_timeouts_fire_while_the_reactor_is_flooded_with_readiness_from_other_sockets()
    {
        await using var io = new IoTestContext();
        using ReactorSocket listener = io.Listen(backlog: 256);
        TimerWheel wheel = io.Reactor.Timers;
        var pairs = new List<(ReactorSocket Client, ReactorSocket Server)>();
        using var stop = new CancellationTokenSource();
        try
        {
            for (int i = 0; i < 33; i++)
            {
                pairs.Add(await io.ConnectPairOnSchedulerAsync(listener));
            }

            // 32 connections ping-pong small messages as fast as they can: edges all the time.
            var flood = pairs.Skip(1).Select(p => Task.Run(async () =>
            {
                var buffer = new byte[64];
                var echo = new byte[64];
                try
                {
                    while (!stop.IsCancellationRequested)
                    {
                        await p.Client.SendAsync(buffer);
                        await IoTestContext.ReceiveExactlyAsync(p.Server, echo);
                        await p.Server.SendAsync(echo);
                        await IoTestContext.ReceiveExactlyAsync(p.Client, buffer);
                    }
                }
                catch (ObjectDisposedException) when (stop.IsCancellationRequested)
                {
                }
            })).ToList();

            ReactorSocket idle = pairs[0].Server;
            var late = new List<TimeSpan>();
            await io.Run(async () =>
            {
                for (int i = 0; i < 15; i++)
                {
                    var due = TimeSpan.FromMilliseconds(5 + i);
                    long start = System.Diagnostics.Stopwatch.GetTimestamp();
                    using var timeout = new CancellationTokenSource(due, wheel);
                    Task<int> receive = idle.ReceiveAsync(new byte[8], timeout.Token).AsTask();

                    // Timed to the receive's completion, on the thread that completes it: this method resumes on a worker
                    // that the flood keeps busy, and a loaded run hands it out seconds late.
                    Task<long> cancelledAt = receive.CompletedAt();
                    await FluentActions.Awaiting(() => receive.WaitAsync(Guard)).Should().ThrowAsync<OperationCanceledException>();
                    TimeSpan elapsed = System.Diagnostics.Stopwatch.GetElapsedTime(start, await cancelledAt);
                    elapsed.Should().BeGreaterThanOrEqualTo(due, "never early");
                    late.Add(elapsed - due);
                }
            }, TimeSpan.FromSeconds(60));

            await stop.CancelAsync();
            await Task.WhenAll(flood).WaitAsync(Guard);
            late.Order().ElementAt(late.Count / 2).Should().BeLessThan(TimeSpan.FromSeconds(1), "the wheel keeps firing between batches of a busy reactor");
        }
        finally
        {
            await stop.CancelAsync();
            pairs.ForEach(p =>
            {
                p.Client.Dispose();
                p.Server.Dispose();
            });
        }
    }

    [Fact]
    public async Task A_token_whose_timeout_source_was_disposed_before_the_call_or_while_parked_neither_fires_nor_wedges_the_socket()
    {
        await using var io = new IoTestContext();
        using ReactorSocket listener = io.Listen();
        TimerWheel wheel = io.Reactor.Timers;
        await io.RunOnPair(listener, async (client, server) =>
        {
            for (int round = 0; round < 20; round++)
            {
                var timeout = new CancellationTokenSource(TimeSpan.FromMilliseconds(30 + (round % 3)), wheel);
                CancellationToken token = timeout.Token;
                bool before = round % 2 == 0;
                if (before)
                {
                    timeout.Dispose(); // its timer goes with it: the token can never fire now
                }

                var buffer = new byte[4];
                ValueTask<int> receive = server.ReceiveAsync(buffer, token);
                if (!before)
                {
                    timeout.Dispose(); // while the receive is parked and registered with it
                }

                await wheel.DelayAsync(TimeSpan.FromMilliseconds(40)); // past the disposed source's due time
                if (token.IsCancellationRequested)
                {
                    // Preempted past the due time before the disposal (or its expiry was being queued just then, which
                    // timers.md allows, as the BCL's timers do): the receive was cancelled, and consumed nothing.
                    await FluentActions.Awaiting(async () => await receive).Should().ThrowAsync<OperationCanceledException>();
                    continue;
                }

                receive.IsCompleted.Should().BeFalse($"round {round}: a disposed source never cancels");
                await client.SendAsync(new byte[] { (byte)round, 1, 2, 3 });
                int n = await receive.AsTask().WaitAsync(Guard);
                n.Should().Be(4);
                buffer[0].Should().Be((byte)round);
            }

            await IoTestContext.AssertByteCrossesAsync(client, server, 5);
        });
    }

    [Fact]
    public async Task Zero_length_receives_timing_out_as_data_arrives_never_consume_it()
    {
        await using var io = new IoTestContext();
        using ReactorSocket listener = io.Listen();
        TimerWheel wheel = io.Reactor.Timers;
        await io.RunOnPair(listener, async (client, server) =>
        {
            var random = new Random(3);
            byte[] stream = IoTestContext.Pattern(4_000, 9);
            int sent = 0;
            var received = new List<byte>();
            while (sent < stream.Length)
            {
                int length = random.Next(1, 100);
                TimeSpan due = TimeSpan.FromMicroseconds(random.Next(0, 1_500));
                using var timeout = new CancellationTokenSource(due, wheel);
                int start = sent;
                Task send = wheel.DelayAsync(due).AsTask().ContinueWith(
                    _ => client.SendAsync(stream.AsMemory(start, Math.Min(length, stream.Length - start))).AsTask(),
                    CancellationToken.None, TaskContinuationOptions.None, TaskScheduler.Default).Unwrap();
                sent = Math.Min(stream.Length, sent + length);

                (int bytes, Exception? error) = await Outcome(server.ReceiveAsync(Memory<byte>.Empty, timeout.Token));
                if (error is not null)
                {
                    error.Should().BeAssignableTo<OperationCanceledException>();
                }
                else
                {
                    bytes.Should().Be(0, "an empty buffer only waits for readability");
                }

                await send.WaitAsync(Guard);
                while (received.Count < sent)
                {
                    var buffer = new byte[sent - received.Count];
                    int n = await server.ReceiveAsync(buffer).AsTask().WaitAsync(Guard);
                    n.Should().BeGreaterThan(0);
                    received.AddRange(buffer.AsSpan(0, n).ToArray());
                }
            }

            received.Should().Equal(stream);
        });
    }

    [Fact]
    public async Task Hundreds_of_connections_timing_out_and_closing_leak_no_fd_no_registration_and_no_timer()
    {
        await using var io = new IoTestContext();
        using ReactorSocket listener = io.Listen(backlog: 1024);
        TimerWheel wheel = io.Reactor.Timers;

        // Warm up (lazily created runtime sockets, pools) before the baseline.
        await io.RunOnPair(listener, (c, s) => Task.CompletedTask);
        (int Sockets, int Epolls) before = ReactorDescriptors.Count();

        int timedOut = 0;
        await io.Run(async () =>
        {
            var random = new Random(23);
            for (int batch = 0; batch < 8; batch++)
            {
                var rounds = new List<Task>();
                for (int i = 0; i < 50; i++)
                {
                    (ReactorSocket client, ReactorSocket server) = await io.ConnectPairAsync(listener);
                    int kind = random.Next(4);
                    int micros = random.Next(100, 5_000);
                    rounds.Add(Task.Run(async () =>
                    {
                        using (client)
                        using (server)
                        {
                            using var timeout = new CancellationTokenSource(TimeSpan.FromMicroseconds(micros), wheel);
                            var buffer = new byte[32];
                            switch (kind)
                            {
                                case 0: // receive times out, then the socket is closed
                                    await FluentActions.Awaiting(async () => await server.ReceiveAsync(buffer, timeout.Token))
                                        .Should().ThrowAsync<OperationCanceledException>();
                                    Interlocked.Increment(ref timedOut);
                                    break;
                                case 1: // both sides time out at once with the same token
                                    Task a = FluentActions.Awaiting(async () => await server.ReceiveAsync(buffer, timeout.Token))
                                        .Should().ThrowAsync<OperationCanceledException>();
                                    Task b = FluentActions.Awaiting(async () => await client.ReceiveAsync(buffer, timeout.Token))
                                        .Should().ThrowAsync<OperationCanceledException>();
                                    await Task.WhenAll(a, b);
                                    Interlocked.Increment(ref timedOut);
                                    break;
                                case 2: // closed while the receive still waits for its timeout
                                    ValueTask<int> pending = server.ReceiveAsync(buffer, timeout.Token);
                                    server.Dispose();
                                    Exception? error = await Record.ExceptionAsync(async () => await pending);
                                    error.Should().Match<Exception>(e => e is ObjectDisposedException || e is OperationCanceledException);
                                    break;
                                default: // the peer closes just before the timeout
                                    _ = wheel.DelayAsync(TimeSpan.FromMicroseconds(micros)).AsTask().ContinueWith(_ => client.Dispose(), TaskScheduler.Default);
                                    (int bytes, Exception? e) = await Outcome(server.ReceiveAsync(buffer, timeout.Token));
                                    if (e is not null)
                                    {
                                        e.Should().Match<Exception>(x => x is OperationCanceledException || x is SocketException);
                                    }
                                    else
                                    {
                                        bytes.Should().Be(0);
                                    }

                                    break;
                            }
                        }
                    }));
                }

                await Task.WhenAll(rounds);
            }
        }, TimeSpan.FromSeconds(60));

        timedOut.Should().BeGreaterThan(0);
        io.Reactor.RegisteredCount.Should().Be(1, "only the listener is still registered");
        (int Sockets, int Epolls) after = ReactorDescriptors.Count();
        after.Sockets.Should().BeLessThanOrEqualTo(before.Sockets, "no socket fd may stay open");
        after.Epolls.Should().BeLessThanOrEqualTo(before.Epolls);

        // Every timeout source was disposed: the wheel holds nothing once the driver reconciled (within a few ms).
        DateTime until = DateTime.UtcNow + Guard;
        while (wheel.PendingCount > 1 && DateTime.UtcNow < until)
        {
            await wheel.DelayAsync(TimeSpan.FromMilliseconds(10));
        }

        wheel.PendingCount.Should().BeLessThanOrEqualTo(1, "nothing but (at most) the poll delay above stays on the wheel");
    }

    [Fact]
    public async Task Connections_whose_pipe_reads_time_out_then_dispose_leak_nothing_and_close_promptly()
    {
        await using var io = new IoTestContext();
        using ReactorSocket listener = io.Listen(backlog: 1024);
        TimerWheel wheel = io.Reactor.Timers;
        await io.RunOnPair(listener, (c, s) => Task.CompletedTask);
        (int Sockets, int Epolls) before = ReactorDescriptors.Count();

        int timedOut = 0;
        await io.Run(async () =>
        {
            var random = new Random(61);
            for (int batch = 0; batch < 6; batch++)
            {
                var rounds = new List<Task>();
                for (int i = 0; i < 40; i++)
                {
                    (ReactorSocket client, ReactorSocket server) = await io.ConnectPairAsync(listener);
                    int kind = random.Next(3);
                    int micros = random.Next(100, 4_000);
                    rounds.Add(Task.Run(async () =>
                    {
                        using (client)
                        {
                            var connection = ReactorConnection.Create(server);
                            using var timeout = new CancellationTokenSource(TimeSpan.FromMicroseconds(micros), wheel);
                            Task peerEnd = Task.CompletedTask;
                            if (kind == 1)
                            {
                                // The peer's bytes and its end come about when the read times out.
                                peerEnd = wheel.DelayAsync(TimeSpan.FromMicroseconds(micros)).AsTask().ContinueWith(async _ =>
                                {
                                    await client.SendAsync(new byte[] { 1, 2, 3 });
                                    client.Shutdown(SocketShutdown.Send);
                                }, TaskScheduler.Default).Unwrap();
                            }

                            try
                            {
                                ReadResult result = await connection.Input.ReadAsync(timeout.Token);
                                connection.Input.AdvanceTo(result.Buffer.End);
                            }
                            catch (OperationCanceledException e) when (e.CancellationToken == timeout.Token)
                            {
                                Interlocked.Increment(ref timedOut);
                            }

                            if (kind == 2)
                            {
                                connection.Output.Write(new byte[100]);
                                _ = connection.Output.FlushAsync();
                            }

                            // A peer that never reads nor closes: DisposeAsync is bounded (about a second at most).
                            await connection.DisposeAsync().AsTask().WaitAsync(Guard);
                            await FluentActions.Awaiting(async () => await server.ReceiveAsync(new byte[1]))
                                .Should().ThrowAsync<ObjectDisposedException>();

                            // Observed before the client goes: a peer whose delay came late finds the server side
                            // closed (a send's EPIPE, a shutdown's ENOTCONN after the reset), and the dropped task
                            // reached the finalizer unobserved (UNOBSERVED_PROBE, session 35).
                            await peerEnd.Ended().WaitAsync(Guard);
                        }
                    }));
                }

                await Task.WhenAll(rounds);
            }
        }, TimeSpan.FromSeconds(60));

        timedOut.Should().BeGreaterThan(0);
        io.Reactor.RegisteredCount.Should().Be(1, "only the listener is still registered");
        (int Sockets, int Epolls) after = ReactorDescriptors.Count();
        after.Sockets.Should().BeLessThanOrEqualTo(before.Sockets, "no socket fd may stay open");
    }

    [Fact]
    public async Task Connects_to_a_listener_that_never_accepts_time_out_on_the_reactor_wheel_and_leave_no_socket()
    {
        await using var io = new IoTestContext();
        using ReactorSocket listener = io.Listen(backlog: 1);
        TimerWheel wheel = io.Reactor.Timers;
        var connected = new List<ReactorSocket>();
        try
        {
            (int Sockets, int Epolls) before = ReactorDescriptors.Count();
            int timedOut = 0;
            var random = new Random(31);
            for (int i = 0; i < 40; i++)
            {
                using var timeout = new CancellationTokenSource(TimeSpan.FromMicroseconds(random.Next(500, 30_000)), wheel);
                try
                {
                    connected.Add(await io.Run(async () => await ReactorSocket.ConnectAsync(io.Reactor, listener.LocalEndPoint!, timeout.Token)));
                }
                catch (OperationCanceledException e)
                {
                    e.CancellationToken.Should().Be(timeout.Token);
                    timedOut++;
                }
            }

            timedOut.Should().BeGreaterThan(30, "the accept queue holds two connections; later SYNs are dropped");
            io.Reactor.RegisteredCount.Should().Be(1 + connected.Count, "a cancelled connect closes its socket");
            ReactorDescriptors.Count().Sockets.Should().BeLessThanOrEqualTo(before.Sockets + connected.Count);

            // The reactor still serves the listener: accept what got through, and those connections work.
            foreach (ReactorSocket client in connected)
            {
                using ReactorSocket server = await io.Run(async () => await listener.AcceptAsync().AsTask().WaitAsync(Guard));
                await io.Run(() => IoTestContext.AssertByteCrossesAsync(client, server, 7));
            }
        }
        finally
        {
            connected.ForEach(c => c.Dispose());
        }
    }

    [Fact]
    public async Task Timer_callbacks_that_dispose_sockets_under_timed_receives_and_sends_end_them_with_ObjectDisposed_or_cancellation()
    {
        await using var io = new IoTestContext();
        using ReactorSocket listener = io.Listen(backlog: 1024);
        TimerWheel wheel = io.Reactor.Timers;
        await io.RunOnPair(listener, (c, s) => Task.CompletedTask);
        (int Sockets, int Epolls) before = ReactorDescriptors.Count();

        var outcomes = new List<Exception?>();
        await io.Run(async () =>
        {
            var random = new Random(41);
            for (int round = 0; round < 100; round++)
            {
                (ReactorSocket client, ReactorSocket server) = await io.ConnectPairAsync(listener);
                using (client)
                {
                    TimeSpan due = TimeSpan.FromMicroseconds(random.Next(200, 3_000));
                    using var timeout = new CancellationTokenSource(due, wheel);
                    using ITimer killer = wheel.CreateTimer(s => ((ReactorSocket)s!).Dispose(), server, due, Timeout.InfiniteTimeSpan);

                    // A receive, and a send parked on a peer that does not read, both bounded by the same timeout.
                    Task receive = Task.Run(async () => await server.ReceiveAsync(new byte[16], timeout.Token));
                    Task send = Task.Run(async () =>
                    {
                        var chunk = new byte[1 << 20];
                        while (true)
                        {
                            await server.SendAsync(chunk, timeout.Token);
                        }
                    });

                    foreach (Task t in new[] { receive, send })
                    {
                        Exception? error = await Record.ExceptionAsync(() => t.WaitAsync(Guard));
                        error.Should().NotBeNull();
                        error.Should().Match<Exception>(e => e is ObjectDisposedException || e is OperationCanceledException,
                            $"round {round}: {error}");
                        outcomes.Add(error);
                    }

                    // Once the timer has run, the socket is disposed for good.
                    await wheel.DelayAsync(due + TimeSpan.FromMilliseconds(5));
                    DateTime until = DateTime.UtcNow + Guard;
                    while (server.LocalEndPoint is not null && DateTime.UtcNow < until)
                    {
                        await wheel.DelayAsync(TimeSpan.FromMilliseconds(1));
                    }

                    await FluentActions.Awaiting(async () => await server.ReceiveAsync(new byte[1])).Should().ThrowAsync<ObjectDisposedException>();
                }
            }
        }, TimeSpan.FromSeconds(60));

        io.Reactor.RegisteredCount.Should().Be(1);
        ReactorDescriptors.Count().Sockets.Should().BeLessThanOrEqualTo(before.Sockets);
    }

    [Fact]
    public async Task Cancellation_racing_the_sockets_own_Dispose_ends_pending_receives_sends_and_accepts_with_one_of_the_two()
    {
        await using var io = new IoTestContext();
        using ReactorSocket listener = io.Listen(backlog: 1024);
        var chunk = new byte[1 << 20];
        for (int round = 0; round < 150; round++)
        {
            (ReactorSocket client, ReactorSocket server) = await io.ConnectPairOnSchedulerAsync(listener);
            ReactorSocket acceptor = io.Listen();
            using (client)
            using (acceptor)
            {
                using var cts = new CancellationTokenSource();
                var operations = new List<(string What, Task Task)>();
                await io.Run(() =>
                {
                    operations.Add(("receive", server.ReceiveAsync(new byte[8], cts.Token).AsTask()));
                    operations.Add(("accept", acceptor.AcceptAsync(cts.Token).AsTask()));
                    operations.Add(("send", Task.Run(async () =>
                    {
                        while (true)
                        {
                            await server.SendAsync(chunk, cts.Token); // the client never reads
                        }
                    })));
                    return Task.CompletedTask;
                });

                // Most rounds: the send parked on a full socket; some: the race meets it still sending.
                await Task.Delay(round % 3 == 0 ? 0 : 5);
                using var go = new Barrier(2);
                Task a = Task.Run(() =>
                {
                    go.SignalAndWait();
                    cts.Cancel();
                });
                Task b = Task.Run(() =>
                {
                    go.SignalAndWait();
                    server.Dispose();
                    acceptor.Dispose();
                });
                await Task.WhenAll(a, b).WaitAsync(Guard);
                foreach ((string what, Task operation) in operations)
                {
                    Exception? error = await Record.ExceptionAsync(() => operation.WaitAsync(Guard));
                    error.Should().Match<Exception>(e => e is ObjectDisposedException || e is OperationCanceledException, $"round {round}: the {what} ended with {error}");
                }
            }
        }

        io.Reactor.RegisteredCount.Should().Be(1);
    }

    [Fact]
    public async Task Unix_connects_waiting_for_backlog_room_time_out_on_the_reactor_wheel_with_their_token_and_leave_nothing()
    {
        string path = TempSocketPath();
        var endPoint = new UnixDomainSocketEndPoint(path);
        var clients = new List<ReactorSocket>();
        try
        {
            await using var io = new IoTestContext();
            using ReactorSocket listener = io.Listen(endPoint, backlog: 1);
            TimerWheel wheel = io.Reactor.Timers;
            for (int i = 0; i < 2; i++)
            {
                clients.Add(await io.Run(async () => await ReactorSocket.ConnectAsync(io.Reactor, endPoint)));
            }

            (int Sockets, int Epolls) before = ReactorDescriptors.Count();
            var random = new Random(19);
            for (int i = 0; i < 30; i++)
            {
                using var timeout = new CancellationTokenSource(TimeSpan.FromMicroseconds(random.Next(0, 20_000)), wheel);
                Func<Task> connect = () => io.Run(async () => await ReactorSocket.ConnectAsync(io.Reactor, endPoint, timeout.Token));
                (await connect.Should().ThrowAsync<OperationCanceledException>()).Which.CancellationToken.Should().Be(timeout.Token);
            }

            io.Reactor.RegisteredCount.Should().Be(3, "the listener and the two connected clients");
            ReactorDescriptors.Count().Sockets.Should().BeLessThanOrEqualTo(before.Sockets, "every waiting socket was closed");

            // Room again: a connect with a generous timeout goes through.
            using ReactorSocket first = await io.Run(async () => await listener.AcceptAsync());
            using var generous = new CancellationTokenSource(Guard, wheel);
            using ReactorSocket late = await io.Run(async () => await ReactorSocket.ConnectAsync(io.Reactor, endPoint, generous.Token));
            late.RemoteEndPoint!.ToString().Should().Be(path);
        }
        finally
        {
            clients.ForEach(c => c.Dispose());
            File.Delete(path);
        }
    }

    [Fact]
    public async Task Timeouts_racing_reactor_Dispose_end_receives_sends_accepts_connects_and_delays_with_ObjectDisposed_or_cancellation()
    {
        for (int round = 0; round < 12; round++)
        {
            var io = new IoTestContext();
            string path = TempSocketPath();
            var plain = new List<Socket>();
            var held = new List<ReactorSocket>();
            try
            {
                // Peers outside the reactor (plain sockets): the disposal must not reset them into our operations.
                using ReactorSocket listener = io.Listen(backlog: 64);
                using ReactorSocket full = io.Listen(backlog: 1);
                using ReactorSocket unixFull = io.Listen(new UnixDomainSocketEndPoint(path), backlog: 1);
                TimerWheel wheel = io.Reactor.Timers;
                var servers = new List<ReactorSocket>();
                for (int i = 0; i < 6; i++)
                {
                    Socket peer = IoTestContext.NewPlainSocket();
                    plain.Add(peer);
                    servers.Add(await io.AcceptConnectedAsync(listener, peer));
                }

                // Fill both small backlogs (Linux queues backlog + 1): later connects there wait.
                for (int i = 0; i < 2; i++)
                {
                    Socket peer = IoTestContext.NewPlainSocket();
                    plain.Add(peer);
                    await peer.ConnectAsync(full.LocalEndPoint!).WaitAsync(Guard);
                    held.Add(await io.Run(async () => await ReactorSocket.ConnectAsync(io.Reactor, new UnixDomainSocketEndPoint(path))));
                }

                using var timeout = new CancellationTokenSource(Timeout.InfiniteTimeSpan, wheel);
                var operations = new List<(string What, Task Task)>();
                await io.Run(() =>
                {
                    foreach (ReactorSocket server in servers)
                    {
                        operations.Add(("receive", server.ReceiveAsync(new byte[8], timeout.Token).AsTask()));
                        operations.Add(("send", Task.Run(async () =>
                        {
                            var chunk = new byte[1 << 20];
                            while (true)
                            {
                                await server.SendAsync(chunk, timeout.Token); // the peer never reads
                            }
                        })));
                    }

                    operations.Add(("accept", listener.AcceptAsync(timeout.Token).AsTask()));
                    operations.Add(("delay", wheel.DelayAsync(TimeSpan.FromMinutes(1), timeout.Token).AsTask()));
                    operations.Add(("tcp connect", ReactorSocket.ConnectAsync(io.Reactor, full.LocalEndPoint!, timeout.Token).AsTask()));
                    operations.Add(("unix connect", ReactorSocket.ConnectAsync(io.Reactor, new UnixDomainSocketEndPoint(path), timeout.Token).AsTask()));
                    return Task.CompletedTask;
                });

                // Let the sends fill their sockets, then arm the timeout to fire about when the reactor goes.
                await Task.Delay(30);
                timeout.CancelAfter(TimeSpan.FromMicroseconds(500 + (round * 150)));
                await Task.Delay(TimeSpan.FromMicroseconds(round * 150));
                await Task.Run(io.Reactor.Dispose).WaitAsync(Guard);

                foreach ((string what, Task operation) in operations)
                {
                    Exception? error = await Record.ExceptionAsync(() => operation.WaitAsync(Guard));
                    error.Should().NotBeNull($"round {round}: the {what} cannot succeed");
                    error.Should().Match<Exception>(e => e is ObjectDisposedException || e is OperationCanceledException,
                        $"round {round}: the {what} ended with {error}");
                }

                // The source's timer belongs to a disposed wheel: disposing the source must still be harmless.
                FluentActions.Invoking(timeout.Dispose).Should().NotThrow();
            }
            finally
            {
                await io.DisposeAsync();
                plain.ForEach(s => s.Dispose());
                held.ForEach(s => s.Dispose());
                File.Delete(path);
            }
        }
    }

    [Fact]
    public async Task A_reactor_disposed_from_a_callback_of_its_own_wheel_fails_everything_pending_and_does_not_deadlock()
    {
        var io = new IoTestContext();
        try
        {
            using ReactorSocket listener = io.Listen();
            TimerWheel wheel = io.Reactor.Timers;
            (ReactorSocket client, ReactorSocket server) = await io.ConnectPairOnSchedulerAsync(listener);
            using (client)
            using (server)
            {
                using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(30), wheel);
                Task receive = io.Run(async () => await server.ReceiveAsync(new byte[8], timeout.Token));
                Task delay = wheel.DelayAsync(TimeSpan.FromMinutes(1)).AsTask();
                var disposed = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);

                // From a cancellation callback that the wheel runs (the source's timer): the wheel and the reactor go. Armed
                // once the callback is registered: a source that fired first (a loaded run can hold this thread off its
                // core past 20 ms) would run it here, on the test's thread, instead.
                using var trigger = new CancellationTokenSource(Timeout.InfiniteTimeSpan, wheel);
                trigger.Token.Register(() =>
                {
                    try
                    {
                        io.Reactor.Dispose();
                        disposed.SetResult();
                    }
                    catch (Exception e)
                    {
                        disposed.SetException(e);
                    }
                });
                trigger.CancelAfter(TimeSpan.FromMilliseconds(20));

                await disposed.Task.WaitAsync(Guard);
                (await Record.ExceptionAsync(() => receive.WaitAsync(Guard))).Should().BeOfType<ObjectDisposedException>();
                (await Record.ExceptionAsync(() => delay.WaitAsync(Guard))).Should().BeOfType<ObjectDisposedException>();
                FluentActions.Invoking(() => io.Reactor.Timers).Should().Throw<ObjectDisposedException>();
                FluentActions.Invoking(() => new CancellationTokenSource(TimeSpan.FromSeconds(1), wheel)).Should().Throw<ObjectDisposedException>();
                (await Record.ExceptionAsync(() => Task.Delay(TimeSpan.FromMilliseconds(1), wheel).WaitAsync(Guard))).Should().BeOfType<ObjectDisposedException>();
            }
        }
        finally
        {
            await io.DisposeAsync();
        }
    }

    [Fact]
    public async Task Pipe_reads_that_time_out_again_and_again_lose_and_reorder_no_byte()
    {
        await using var io = new IoTestContext();
        TimerWheel wheel = io.Reactor.Timers;
        byte[] stream = IoTestContext.Pattern(200_000, 5);

        // Reads time out only while the reader waits for the writer: a loaded run that starts the reader late finds every
        // byte queued already, and each read completes at once (none timed out, once in 10 runs beside busy processes).
        // A pass that saw no timeout runs again on a fresh connection, up to 5 passes; each pass checks every byte.
        int timeouts = 0;
        for (int pass = 0; pass < 5 && timeouts == 0; pass++)
        {
            timeouts = await OnePassAsync();
        }

        timeouts.Should().BeGreaterThan(0, "some reads met their timeout (a check of the test itself)");

        async Task<int> OnePassAsync()
        {
            (ReactorConnection connection, ReactorSocket client) = await io.ConnectionPairAsync();
            await using (connection)
            using (client)
            {
                Task writer = Task.Run(async () =>
                {
                    var random = new Random(8);
                    int offset = 0;
                    while (offset < stream.Length)
                    {
                        int length = Math.Min(random.Next(1, 9_000), stream.Length - offset);
                        await client.SendAsync(stream.AsMemory(offset, length));
                        offset += length;
                        if (random.Next(3) == 0)
                        {
                            await wheel.DelayAsync(TimeSpan.FromMicroseconds(random.Next(0, 2_000)));
                        }
                    }

                    client.Shutdown(SocketShutdown.Send);
                });

                int timedOut = 0;
                byte[] received = await io.Run(async () =>
                {
                    var random = new Random(9);
                    var all = new List<byte>(stream.Length);
                    while (true)
                    {
                        using var timeout = new CancellationTokenSource(TimeSpan.FromMicroseconds(random.Next(0, 1_500)), wheel);
                        ReadResult result;
                        try
                        {
                            result = await connection.Input.ReadAsync(timeout.Token);
                        }
                        catch (OperationCanceledException)
                        {
                            timedOut++;
                            continue;
                        }

                        // Take a random part only: the rest must come back on the next read.
                        ReadOnlySequence<byte> buffer = result.Buffer;
                        long take = buffer.Length == 0 ? 0 : random.Next(1, (int)Math.Min(buffer.Length, 20_000) + 1);
                        all.AddRange(buffer.Slice(0, take).ToArray());
                        connection.Input.AdvanceTo(buffer.GetPosition(take), buffer.End);
                        if (result.IsCompleted && take == buffer.Length)
                        {
                            return all.ToArray();
                        }
                    }
                }, TimeSpan.FromSeconds(60));

                await writer.WaitAsync(Guard);
                received.Should().Equal(stream);
                return timedOut;
            }
        }
    }

    [Fact]
    public async Task A_pipe_read_with_an_already_cancelled_token_then_a_normal_read_sees_every_byte()
    {
        await using var io = new IoTestContext();
        (ReactorConnection connection, ReactorSocket client) = await io.ConnectionPairAsync();
        await using (connection)
        using (client)
        {
            await io.Run(async () =>
            {
                using var cancelled = new CancellationTokenSource();
                await cancelled.CancelAsync();

                // Nothing buffered yet, then with bytes already in the pipe.
                await FluentActions.Awaiting(async () => await connection.Input.ReadAsync(cancelled.Token)).Should().ThrowAsync<OperationCanceledException>();
                await client.SendAsync(new byte[] { 1, 2, 3 });
                await FluentActions.Awaiting(async () => await connection.Input.ReadAsync(cancelled.Token)).Should().ThrowAsync<OperationCanceledException>();
                await client.SendAsync(new byte[] { 4, 5 });
                client.Shutdown(SocketShutdown.Send);

                var all = new List<byte>();
                while (true)
                {
                    using var generous = new CancellationTokenSource(Guard, io.Reactor.Timers);
                    ReadResult result = await connection.Input.ReadAsync(generous.Token);
                    all.AddRange(result.Buffer.ToArray());
                    connection.Input.AdvanceTo(result.Buffer.End);
                    if (result.IsCompleted)
                    {
                        break;
                    }
                }

                all.Should().Equal(1, 2, 3, 4, 5);
            });
        }
    }

    [Fact]
    public async Task A_unix_connect_waiting_for_backlog_room_still_connects_after_the_user_disposed_the_reactor_wheel()
    {
        // docs/io.md: "Disposing the wheel yourself stops it the same way and leaves the reactor's sockets running", and a
        // connect to a full Unix domain backlog waits "until it connects, the token is cancelled or the reactor is
        // disposed". Its pauses are delays on reactor.Timers.
        string path = TempSocketPath();
        var endPoint = new UnixDomainSocketEndPoint(path);
        var clients = new List<ReactorSocket>();
        try
        {
            await using var io = new IoTestContext(threadNamePrefix: "wheel-gone");
            using ReactorSocket listener = io.Listen(endPoint, backlog: 1);
            for (int i = 0; i < 2; i++)
            {
                clients.Add(await io.Run(async () => await ReactorSocket.ConnectAsync(io.Reactor, endPoint)));
            }

            io.Reactor.Timers.Dispose();

            ThreadCpu.Snapshot before = ThreadCpu.Take();
            Task<ReactorSocket> waiting = io.Run(async () => await ReactorSocket.ConnectAsync(io.Reactor, endPoint));
            await Task.WhenAny(waiting, Task.Delay(300));
            Exception? early = waiting.IsFaulted ? waiting.Exception!.InnerException : null;
            early.Should().BeNull("the reactor is not disposed: the connect waits for room");

            // It still pauses between tries (Task.Delay stands in for the wheel): tried again without one, the connect
            // kept a worker busy for the whole wait (a mutation run, session 51).
            IReadOnlyList<ThreadCpu.Usage> used = ThreadCpu.Since(before);
            ThreadCpu.Sum(used, name => name.StartsWith("wheel-gone", StringComparison.Ordinal)).Should()
                .BeLessThan(100, "a waiting connect sleeps between tries ({0})", ThreadCpu.Describe(used));

            using ReactorSocket first = await io.Run(async () => await listener.AcceptAsync());
            using ReactorSocket client = await waiting.WaitAsync(Guard);
            client.RemoteEndPoint!.ToString().Should().Be(path);
        }
        finally
        {
            clients.ForEach(c => c.Dispose());
            File.Delete(path);
        }
    }

    [Fact]
    public async Task A_unix_connect_already_waiting_for_backlog_room_survives_the_user_disposing_the_reactor_wheel()
    {
        // As above, with the wheel disposed while the connect is already in one of its pauses.
        string path = TempSocketPath();
        var endPoint = new UnixDomainSocketEndPoint(path);
        var clients = new List<ReactorSocket>();
        try
        {
            await using var io = new IoTestContext();
            using ReactorSocket listener = io.Listen(endPoint, backlog: 1);
            for (int i = 0; i < 2; i++)
            {
                clients.Add(await io.Run(async () => await ReactorSocket.ConnectAsync(io.Reactor, endPoint)));
            }

            Task<ReactorSocket> waiting = io.Run(async () => await ReactorSocket.ConnectAsync(io.Reactor, endPoint));
            await Task.WhenAny(waiting, Task.Delay(100));
            waiting.IsCompleted.Should().BeFalse("the backlog is full: the connect waits");

            io.Reactor.Timers.Dispose();
            await Task.WhenAny(waiting, Task.Delay(200));
            Exception? early = waiting.IsFaulted ? waiting.Exception!.InnerException : null;
            early.Should().BeNull("the reactor is not disposed: the connect keeps waiting for room");

            using ReactorSocket first = await io.Run(async () => await listener.AcceptAsync());
            using ReactorSocket client = await waiting.WaitAsync(Guard);
            client.RemoteEndPoint!.ToString().Should().Be(path);
        }
        finally
        {
            clients.ForEach(c => c.Dispose());
            File.Delete(path);
        }
    }

    [Fact]
    public async Task One_token_shared_by_parked_sends_on_many_sockets_cancels_them_all_and_each_stream_stays_a_clean_prefix()
    {
        await using var io = new IoTestContext();
        using ReactorSocket listener = io.Listen();
        TimerWheel wheel = io.Reactor.Timers;
        const int Pairs = 8;
        const int Length = 8 << 20;
        byte[] payload = new byte[Length];
        for (int i = 0; i < Length; i++)
        {
            payload[i] = (byte)(i % 251);
        }

        byte[] marker = [255, 254, 253, 252, 255, 254, 253, 252];
        var pairs = new List<(ReactorSocket Client, ReactorSocket Server)>();
        try
        {
            for (int i = 0; i < Pairs; i++)
            {
                pairs.Add(await io.ConnectPairOnSchedulerAsync(listener));
            }

            using var timeout = new CancellationTokenSource(TimeSpan.FromMilliseconds(100), wheel);
            Task<(int Bytes, Exception? Error)>[] sends = await io.Run(() => Task.FromResult(
                pairs.Select(p => Outcome(p.Client.SendAsync(payload, timeout.Token))).ToArray()));
            await Task.WhenAll(sends).WaitAsync(Guard);
            foreach (Task<(int Bytes, Exception? Error)> send in sends)
            {
                send.Result.Error.Should().BeAssignableTo<OperationCanceledException>("no peer reads 8 MB in 100 ms")
                    .Which.CancellationToken.Should().Be(timeout.Token);
            }

            // Each socket still sends; its peer reads a prefix of the payload, then the marker, then the end.
            await io.Run(async () =>
            {
                await Task.WhenAll(pairs.Select(async p =>
                {
                    Task<List<byte>> reader = Task.Run(async () =>
                    {
                        var all = new List<byte>();
                        var buffer = new byte[1 << 16];
                        int n;
                        while ((n = await p.Server.ReceiveAsync(buffer)) > 0)
                        {
                            all.AddRange(buffer.AsSpan(0, n).ToArray());
                        }

                        return all;
                    });
                    (await p.Client.SendAsync(marker).AsTask().WaitAsync(Guard)).Should().Be(marker.Length);
                    p.Client.Shutdown(SocketShutdown.Send);
                    List<byte> got = await reader.WaitAsync(Guard);
                    int prefix = got.Count - marker.Length;
                    prefix.Should().BeInRange(0, Length);
                    got.Skip(prefix).Should().Equal(marker);
                    for (int i = 0; i < prefix; i++)
                    {
                        if (got[i] != payload[i])
                        {
                            throw new InvalidOperationException($"byte {i} of the cancelled send's prefix is {got[i]}, expected {payload[i]}");
                        }
                    }
                }));
            }, TimeSpan.FromSeconds(60));
        }
        finally
        {
            pairs.ForEach(p =>
            {
                p.Client.Dispose();
                p.Server.Dispose();
            });
        }
    }

    [Fact]
    public async Task Accepts_with_a_timeout_on_the_reactor_wheel_while_clients_arrive_lose_no_connection_and_leak_nothing()
    {
        await using var io = new IoTestContext();
        using ReactorSocket listener = io.Listen(backlog: 1024);
        TimerWheel wheel = io.Reactor.Timers;
        const int Clients = 200;
        var accepted = new List<ReactorSocket>();
        var plain = new List<Socket>();
        try
        {
            Task connector = Task.Run(async () =>
            {
                var random = new Random(12);
                for (int i = 0; i < Clients; i++)
                {
                    var socket = IoTestContext.NewPlainSocket();
                    await socket.ConnectAsync(listener.LocalEndPoint!);
                    lock (plain)
                    {
                        plain.Add(socket);
                    }

                    if (random.Next(4) == 0)
                    {
                        await Task.Delay(1);
                    }
                }
            });

            int timeouts = 0;
            await io.Run(async () =>
            {
                var random = new Random(13);
                while (accepted.Count < Clients)
                {
                    using var timeout = new CancellationTokenSource(TimeSpan.FromMicroseconds(random.Next(0, 800)), wheel);
                    try
                    {
                        accepted.Add(await listener.AcceptAsync(timeout.Token));
                    }
                    catch (OperationCanceledException e)
                    {
                        e.CancellationToken.Should().Be(timeout.Token);
                        timeouts++;
                    }
                }
            }, TimeSpan.FromSeconds(30));
            await connector.WaitAsync(Guard);

            accepted.Should().HaveCount(Clients);
            io.Reactor.RegisteredCount.Should().Be(1 + Clients);
            using var quick = new CancellationTokenSource(TimeSpan.FromMilliseconds(20), wheel);
            await FluentActions.Awaiting(() => io.Run(async () => await listener.AcceptAsync(quick.Token)))
                .Should().ThrowAsync<OperationCanceledException>("no connection is accepted twice");
        }
        finally
        {
            accepted.ForEach(s => s.Dispose());
            plain.ForEach(s => s.Dispose());
        }
    }
}
