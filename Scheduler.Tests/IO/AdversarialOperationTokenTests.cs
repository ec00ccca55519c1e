using System.Collections.Concurrent;
using System.Net.Sockets;
using Scheduler.IO;
using Scheduler.Tests.Scheduling;

// Misusing ValueTasks on purpose (awaiting twice, reading early, keeping stale ones) is what these tests are about.
#pragma warning disable CA2012

namespace Scheduler.Tests.IO;

/// <summary>
/// Adversarial uses of the ValueTasks that <see cref="ReactorSocket"/> operations return. Each socket reuses one
/// operation object per direction (IValueTaskSource-backed, version tokens), so misuse — awaiting twice, reading the
/// result early, keeping an old ValueTask across the next operation — must fail with
/// <see cref="InvalidOperationException"/> and never hand one operation's result to another; and the continuation
/// must run where the awaiter's context says (never on the reactor thread), with the execution context flowing.
/// </summary>
public sealed class AdversarialOperationTokenTests
{
    private static readonly TimeSpan Bound = TimeSpan.FromSeconds(10);

    private static async Task<(IoTestContext Io, ReactorSocket Listener, Socket Peer, ReactorSocket Ours)> OpenAsync(int workers = 2)
    {
        var io = new IoTestContext(workers);
        ReactorSocket listener = io.Listen();
        Socket peer = IoTestContext.NewPlainSocket();
        ReactorSocket ours = await io.AcceptConnectedAsync(listener, peer);
        return (io, listener, peer, ours);
    }

    private static async Task CloseAsync(IoTestContext io, ReactorSocket listener, Socket peer, ReactorSocket ours)
    {
        ours.Dispose();
        peer.Dispose();
        listener.Dispose();
        await io.DisposeAsync();
    }

    private static ValueTask<int> ParkedReceive(ReactorSocket socket, Memory<byte> buffer, CancellationToken token = default)
    {
        ValueTask<int> receive = socket.ReceiveAsync(buffer, token);
        receive.IsCompleted.Should().BeFalse("nothing was sent, so the receive must park");
        return receive;
    }

    [Fact]
    public async Task Awaiting_a_parked_receive_twice_throws_the_second_time_and_the_socket_stays_usable()
    {
        (IoTestContext io, ReactorSocket listener, Socket peer, ReactorSocket ours) = await OpenAsync();
        try
        {
            var buffer = new byte[8];
            ValueTask<int> receive = ParkedReceive(ours, buffer);
            await peer.SendAsync(new byte[] { 7 });
            (await receive.AsTask().WaitAsync(Bound)).Should().Be(1);

            Func<Task> again = async () => await receive;
            await again.Should().ThrowAsync<InvalidOperationException>("the operation was consumed; its token is stale");
            Action result = () => _ = receive.Result;
            result.Should().Throw<InvalidOperationException>();

            await AssertByteCrossesAsync(ours, new PlainPeer(peer), 0).WaitAsync(Bound);
        }
        finally
        {
            await CloseAsync(io, listener, peer, ours);
        }
    }

    // A plain peer: both directions of the reactor socket's operations must still be free and carry bytes.
    private sealed record PlainPeer(Socket Socket);

    private static async Task AssertByteCrossesAsync(ReactorSocket ours, PlainPeer peer, byte value)
    {
        (await ours.SendAsync(new[] { value })).Should().Be(1);
        var one = new byte[1];
        await IoTestContext.ReceiveExactlyAsync(peer.Socket, one);
        one[0].Should().Be(value);
        await peer.Socket.SendAsync(new[] { (byte)(value + 1) });
        var back = new byte[1];
        await IoTestContext.ReceiveExactlyAsync(ours, back);
        back[0].Should().Be((byte)(value + 1));
    }

    [Fact]
    public async Task A_stale_receive_ValueTask_awaited_while_the_next_receive_is_parked_throws_and_does_not_steal_its_result_or_continuation()
    {
        (IoTestContext io, ReactorSocket listener, Socket peer, ReactorSocket ours) = await OpenAsync();
        try
        {
            var first = new byte[8];
            var second = new byte[8];
            ValueTask<int> old = ParkedReceive(ours, first);
            await peer.SendAsync(new byte[] { 1 });
            (await old.AsTask().WaitAsync(Bound)).Should().Be(1);

            // The same operation object now serves the next receive, parked.
            ValueTask<int> next = ParkedReceive(ours, second);
            Task<int> nextTask = next.AsTask();

            // The stale ValueTask, awaited now (registers against the object that the next receive holds).
            Task<int> stale = Task.Run(async () => await old);
            Exception? staleFailure = await Record.ExceptionAsync(() => stale.WaitAsync(Bound));
            staleFailure.Should().BeOfType<InvalidOperationException>("a stale token must be refused, never attached to the next operation");

            Action read = () => _ = old.Result;
            read.Should().Throw<InvalidOperationException>();

            nextTask.IsCompleted.Should().BeFalse("the stale await must not complete the next receive");
            await peer.SendAsync(new byte[] { 2, 3 });
            (await nextTask.WaitAsync(Bound)).Should().Be(2, "the next receive keeps its own continuation and gets its own bytes");
            second.AsSpan(0, 2).ToArray().Should().Equal(2, 3);

            // And once that one has completed and been consumed, the old token still reads nothing.
            Func<Task> late = async () => await old;
            await late.Should().ThrowAsync<InvalidOperationException>();
            Func<Task> lateNext = async () => await next;
            await lateNext.Should().ThrowAsync<InvalidOperationException>();
        }
        finally
        {
            await CloseAsync(io, listener, peer, ours);
        }
    }

    [Fact]
    public async Task A_stale_receive_ValueTask_read_while_the_next_receive_has_completed_unconsumed_throws_and_leaves_the_result_to_its_owner()
    {
        (IoTestContext io, ReactorSocket listener, Socket peer, ReactorSocket ours) = await OpenAsync();
        try
        {
            var buffer = new byte[8];
            ValueTask<int> old = ParkedReceive(ours, buffer);
            await peer.SendAsync(new byte[] { 1 });
            (await old.AsTask().WaitAsync(Bound)).Should().Be(1);

            ValueTask<int> next = ParkedReceive(ours, buffer);
            await peer.SendAsync(new byte[] { 4, 5, 6 });
            await SchedulerTestHelpers.WaitUntilAsync(() => next.IsCompleted).WaitAsync(Bound);

            // The next operation completed (by the reactor) and nobody read it yet: the stale token must not read it.
            Action staleRead = () => _ = old.Result;
            staleRead.Should().Throw<InvalidOperationException>();
            Action staleGetResult = () => old.GetAwaiter().GetResult();
            staleGetResult.Should().Throw<InvalidOperationException>();
            Func<Task> staleAwait = async () => await old;
            await staleAwait.Should().ThrowAsync<InvalidOperationException>();

            next.Result.Should().Be(3, "the stale reads must leave the outcome to the ValueTask that owns it");
            buffer.AsSpan(0, 3).ToArray().Should().Equal(4, 5, 6);
            await AssertByteCrossesAsync(ours, new PlainPeer(peer), 9).WaitAsync(Bound);
        }
        finally
        {
            await CloseAsync(io, listener, peer, ours);
        }
    }

    [Fact]
    public async Task Reading_Result_or_GetResult_of_a_parked_receive_send_or_accept_throws_and_the_operation_still_completes()
    {
        (IoTestContext io, ReactorSocket listener, Socket peer, ReactorSocket ours) = await OpenAsync();
        try
        {
            // Receive.
            var buffer = new byte[8];
            ValueTask<int> receive = ParkedReceive(ours, buffer);
            Action early = () => _ = receive.Result;
            early.Should().Throw<InvalidOperationException>();
            Action earlyAwaiter = () => receive.GetAwaiter().GetResult();
            earlyAwaiter.Should().Throw<InvalidOperationException>();
            receive.IsCompleted.Should().BeFalse("an early read must not finish or release the operation");
            ours.ReceiveAsync(buffer).AsTask().Exception!.InnerException.Should().BeOfType<InvalidOperationException>(
                "the early read must not have freed the operation for a second receive");
            await peer.SendAsync(new byte[] { 1, 2 });
            (await receive.AsTask().WaitAsync(Bound)).Should().Be(2);

            // Accept.
            ValueTask<ReactorSocket> accept = listener.AcceptAsync();
            accept.IsCompleted.Should().BeFalse();
            Action earlyAccept = () => _ = accept.Result;
            earlyAccept.Should().Throw<InvalidOperationException>();
            using Socket other = IoTestContext.NewPlainSocket();
            await other.ConnectAsync(listener.LocalEndPoint!).WaitAsync(Bound);
            using ReactorSocket accepted = await accept.AsTask().WaitAsync(Bound);
            await other.SendAsync(new byte[] { 42 });
            var one = new byte[1];
            await IoTestContext.ReceiveExactlyAsync(accepted, one).WaitAsync(Bound);
            one[0].Should().Be(42);

            // Send: larger than both kernel buffers, with the peer not reading, so it parks.
            byte[] data = IoTestContext.Pattern(16 << 20, seed: 11);
            ValueTask<int> send = ours.SendAsync(data);
            send.IsCompleted.Should().BeFalse("the peer does not read yet, so the send parks");
            Action earlySend = () => _ = send.Result;
            earlySend.Should().Throw<InvalidOperationException>();
            Action earlySendAwaiter = () => send.GetAwaiter().GetResult();
            earlySendAwaiter.Should().Throw<InvalidOperationException>();
            var received = new byte[data.Length];
            Task reading = Task.Run(() => IoTestContext.ReceiveExactlyAsync(peer, received));
            (await send.AsTask().WaitAsync(Bound)).Should().Be(data.Length);
            await reading.WaitAsync(Bound);
            received.AsSpan().SequenceEqual(data).Should().BeTrue();
        }
        finally
        {
            await CloseAsync(io, listener, peer, ours);
        }
    }

    [Fact]
    public async Task Awaiting_the_original_after_AsTask_throws_whether_it_is_still_parked_or_already_consumed()
    {
        (IoTestContext io, ReactorSocket listener, Socket peer, ReactorSocket ours) = await OpenAsync();
        try
        {
            var buffer = new byte[8];
            ValueTask<int> receive = ParkedReceive(ours, buffer);
            Task<int> asTask = receive.AsTask();

            // Awaited while parked: the continuation slot is taken, the second registration loses and reads too early.
            Task<int> second = Task.Run(async () => await receive);
            (await Record.ExceptionAsync(() => second.WaitAsync(Bound))).Should().BeOfType<InvalidOperationException>();
            asTask.IsCompleted.Should().BeFalse("the losing await must not disturb the registered one");

            await peer.SendAsync(new byte[] { 3, 4, 5 });
            (await asTask.WaitAsync(Bound)).Should().Be(3);

            // Awaited after the Task consumed it.
            Task<int> third = Task.Run(async () => await receive);
            (await Record.ExceptionAsync(() => third.WaitAsync(Bound))).Should().BeOfType<InvalidOperationException>();

            await AssertByteCrossesAsync(ours, new PlainPeer(peer), 20).WaitAsync(Bound);
        }
        finally
        {
            await CloseAsync(io, listener, peer, ours);
        }
    }

    [Fact]
    public async Task Preserve_lets_a_parked_receive_be_awaited_many_times_and_frees_the_operation_for_the_next_receive()
    {
        (IoTestContext io, ReactorSocket listener, Socket peer, ReactorSocket ours) = await OpenAsync();
        try
        {
            var buffer = new byte[8];
            ValueTask<int> preserved = ParkedReceive(ours, buffer).Preserve();
            Task<int>[] awaits = Enumerable.Range(0, 8).Select(_ => Task.Run(async () => await preserved)).ToArray();
            await peer.SendAsync(new byte[] { 1, 2, 3, 4 });
            int[] results = await Task.WhenAll(awaits).WaitAsync(Bound);
            results.Should().AllBeEquivalentTo(4);
            (await preserved).Should().Be(4);
            preserved.Result.Should().Be(4);

            // The preserved one consumed the operation: the next receive is free and gets its own bytes.
            ValueTask<int> next = ParkedReceive(ours, buffer);
            await peer.SendAsync(new byte[] { 9 });
            (await next.AsTask().WaitAsync(Bound)).Should().Be(1);
            buffer[0].Should().Be(9);
            preserved.Result.Should().Be(4, "a preserved result is a value of its own, untouched by the next operation");
        }
        finally
        {
            await CloseAsync(io, listener, peer, ours);
        }
    }

    [Fact]
    public async Task Racing_awaits_of_one_parked_receive_give_the_bytes_to_exactly_one_and_never_a_later_operations_count()
    {
        (IoTestContext io, ReactorSocket listener, Socket peer, ReactorSocket ours) = await OpenAsync();
        try
        {
            var buffer = new byte[256];
            for (int round = 1; round <= 150; round++)
            {
                ValueTask<int> receive = ParkedReceive(ours, buffer);
                using var go = new ManualResetEventSlim();
                Task<int> a = Task.Run(async () => { go.Wait(); return await receive; });
                Task<int> b = Task.Run(async () => { go.Wait(); return await receive; });
                // The AsTask racer once crashed the process (session 28): a direct read winning after the Task's registered
                // continuation had started left that continuation's GetStatus to throw a stale token outside the BCL's try.
                // A stale token now reports a fault, and the continuation's read throws inside the try.
                Task<int> c = Task.Run(() => { go.Wait(); return receive.AsTask(); });
                go.Set();

                // Rounds send distinct lengths; the next round sends a different one, so a stolen later result shows.
                int length = round % 200 + 1;
                await peer.SendAsync(new byte[length]);

                Task<int>[] racers = [a, b, c];
                await Task.WhenAll(racers.Select(t => Task.WhenAny(t, Task.Delay(Bound)))).WaitAsync(Bound);
                racers.Should().OnlyContain(t => t.IsCompleted, "every racer must settle (round {0})", round);
                // (That two racers may both get the bytes is its own bug: Two_threads_reading_a_completed_receive_...)
                racers.Where(t => t.IsCompletedSuccessfully).Select(t => t.Result).Should().NotBeEmpty()
                    .And.OnlyContain(n => n == length, "only round {0}'s own count may come out of round {0}'s ValueTask", round);
                racers.Where(t => !t.IsCompletedSuccessfully).Should().OnlyContain(
                    t => t.Exception!.InnerException is InvalidOperationException, "the losers are refused (round {0})", round);
            }
        }
        finally
        {
            await CloseAsync(io, listener, peer, ours);
        }
    }

    [Fact]
    public async Task Two_threads_reading_a_completed_receive_at_once_never_both_get_its_bytes()
    {
        // wakers.md: "of two reads of a completed rental exactly one gets the outcome" and "a racing double await must
        // fail loudly". A receive's bytes handed to two readers are processed twice (for an accept: one socket, two owners).
        (IoTestContext io, ReactorSocket listener, Socket peer, ReactorSocket ours) = await OpenAsync();
        try
        {
            var buffer = new byte[64];
            ValueTask<int> current = default;
            var outcomes = new int[2];
            int ready = 0;
            int go = 0;
            int round = 0;
            using var release0 = new SemaphoreSlim(0);
            using var release1 = new SemaphoreSlim(0);
            using var done = new CountdownEvent(2);
            SemaphoreSlim[] releases = [release0, release1];

            // Two readers that start their read within a few instructions of each other: each blocks until released,
            // then both spin, reader 0 giving the start signal once reader 1 is spinning too.
            Thread[] readers = Enumerable.Range(0, 2).Select(i => new Thread(() =>
            {
                while (true)
                {
                    releases[i].Wait();
                    ValueTask<int> receive = current;
                    if (receive == default)
                    {
                        return;
                    }

                    int myRound = Volatile.Read(ref round);
                    Interlocked.Increment(ref ready);
                    if (i == 0)
                    {
                        while (Volatile.Read(ref ready) < 2)
                        {
                            Thread.SpinWait(1);
                        }

                        Volatile.Write(ref go, myRound);
                        Thread.SpinWait(myRound % 6); // sweeps the leader's head start over the rounds (it sees go first)
                    }
                    else
                    {
                        while (Volatile.Read(ref go) != myRound)
                        {
                            Thread.SpinWait(1);
                        }
                    }

                    try
                    {
                        outcomes[i] = receive.Result;
                    }
                    catch (InvalidOperationException)
                    {
                        outcomes[i] = -1;
                    }

                    done.Signal();
                }
            }) { IsBackground = true }).ToArray();
            foreach (Thread reader in readers)
            {
                reader.Start();
            }

            int duplicated = 0;
            int rounds = 0;
            var watch = System.Diagnostics.Stopwatch.StartNew();
            try
            {
                while (duplicated == 0 && rounds < 20000 && watch.Elapsed < TimeSpan.FromSeconds(9))
                {
                    rounds++;
                    ValueTask<int> receive = ParkedReceive(ours, buffer);
                    await peer.SendAsync(new byte[] { 1, 2, 3 });
                    var spin = System.Diagnostics.Stopwatch.StartNew();
                    while (!receive.IsCompleted)
                    {
                        spin.Elapsed.Should().BeLessThan(Bound, "the receive must complete");
                        Thread.SpinWait(20);
                    }

                    current = receive;
                    Volatile.Write(ref ready, 0);
                    Volatile.Write(ref round, rounds);
                    done.Reset(2);
                    release0.Release();
                    release1.Release();
                    done.Wait(Bound).Should().BeTrue("both readers must finish their read");
                    outcomes.Count(n => n == 3).Should().BeGreaterThan(0, "one reader gets the bytes (round {0})", rounds);
                    outcomes.Should().OnlyContain(n => n == 3 || n == -1);
                    if (outcomes.All(n => n == 3))
                    {
                        duplicated++;
                    }
                }
            }
            finally
            {
                current = default;
                release0.Release();
                release1.Release();
                foreach (Thread reader in readers)
                {
                    reader.Join(Bound);
                }
            }

            duplicated.Should().Be(0, "exactly one of two racing reads of a completed receive may get its bytes, "
                + "but in round {0} both readers got the same 3 bytes", rounds);
        }
        finally
        {
            await CloseAsync(io, listener, peer, ours);
        }
    }

    [Fact]
    public async Task WhenAll_and_WhenAny_over_many_sockets_receives_give_each_socket_its_own_bytes()
    {
        const int Pairs = 48;
        await using var io = new IoTestContext();
        using ReactorSocket listener = io.Listen();
        var peers = new List<Socket>();
        var ours = new List<ReactorSocket>();
        try
        {
            for (int i = 0; i < Pairs; i++)
            {
                Socket peer = IoTestContext.NewPlainSocket();
                peers.Add(peer);
                ours.Add(await io.AcceptConnectedAsync(listener, peer));
            }

            for (int round = 0; round < 3; round++)
            {
                byte[][] buffers = Enumerable.Range(0, Pairs).Select(_ => new byte[64]).ToArray();
                Task<int>[] receives = Enumerable.Range(0, Pairs).Select(i => ours[i].ReceiveAsync(buffers[i]).AsTask()).ToArray();

                // One socket first: WhenAny must name it.
                await peers[17].SendAsync(Tagged(17, round));
                Task<int> firstDone = await Task.WhenAny(receives).WaitAsync(Bound);
                firstDone.Should().BeSameAs(receives[17]);

                for (int i = 0; i < Pairs; i++)
                {
                    if (i != 17)
                    {
                        await peers[i].SendAsync(Tagged(i, round));
                    }
                }

                int[] counts = await Task.WhenAll(receives).WaitAsync(Bound);
                for (int i = 0; i < Pairs; i++)
                {
                    counts[i].Should().Be(1 + (i % 40), "socket {0} gets its own length", i);
                    buffers[i].AsSpan(0, counts[i]).ToArray().Should().OnlyContain(b => b == (byte)(i + round), "socket {0} gets its own bytes", i);
                }
            }
        }
        finally
        {
            foreach (ReactorSocket socket in ours)
            {
                socket.Dispose();
            }

            foreach (Socket peer in peers)
            {
                peer.Dispose();
            }
        }

        static byte[] Tagged(int i, int round) => Enumerable.Repeat((byte)(i + round), 1 + (i % 40)).ToArray();
    }

    [Fact]
    public async Task A_receive_awaited_under_a_foreign_SynchronizationContext_resumes_on_that_context()
    {
        (IoTestContext io, ReactorSocket listener, Socket peer, ReactorSocket ours) = await OpenAsync();
        using var context = new SingleThreadSynchronizationContext();
        try
        {
            var buffer = new byte[8];
            var parked = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            Task<(int Count, bool OnContextThread, SynchronizationContext? Current)> run = context.Run(async () =>
            {
                ValueTask<int> receive = ParkedReceive(ours, buffer);
                parked.TrySetResult();
                int n = await receive;
                return (n, Environment.CurrentManagedThreadId == context.ThreadId, SynchronizationContext.Current);
            });

            await parked.Task.WaitAsync(Bound);

            // The context thread goes on to the await at once; bytes arriving before it registers would complete the
            // await synchronously, with no post (failed once in CI). A fixed pause only makes that unlikely (a context
            // thread stalled longer still misses it): the pump runs one callback at a time, in order, so an empty item
            // queued behind the body (Run counts no post) runs only once the body has reached its await and returned.
            await context.Run(() => Task.FromResult(true)).WaitAsync(Bound);
            await peer.SendAsync(new byte[] { 1, 2 });
            (int count, bool onContextThread, SynchronizationContext? current) = await run.WaitAsync(Bound);
            count.Should().Be(2);
            onContextThread.Should().BeTrue("the continuation is posted to the captured context");
            current.Should().BeSameAs(context);
            context.Posts.Should().BeGreaterThan(0);
        }
        finally
        {
            await CloseAsync(io, listener, peer, ours);
        }
    }

    [Fact]
    public async Task A_receive_awaited_on_an_exclusive_TaskScheduler_resumes_on_that_scheduler()
    {
        (IoTestContext io, ReactorSocket listener, Socket peer, ReactorSocket ours) = await OpenAsync();
        var pair = new ConcurrentExclusiveSchedulerPair();
        try
        {
            var buffer = new byte[8];
            var parked = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            Task<(int, TaskScheduler)> run = Task.Factory.StartNew(async () =>
            {
                ValueTask<int> receive = ParkedReceive(ours, buffer);
                parked.TrySetResult();
                int n = await receive;
                return (n, TaskScheduler.Current);
            }, CancellationToken.None, TaskCreationOptions.DenyChildAttach, pair.ExclusiveScheduler).Unwrap();

            await parked.Task.WaitAsync(Bound);
            await peer.SendAsync(new byte[] { 1 });
            (int count, TaskScheduler current) = await run.WaitAsync(Bound);
            count.Should().Be(1);
            current.Should().BeSameAs(pair.ExclusiveScheduler);
        }
        finally
        {
            pair.Complete();
            await CloseAsync(io, listener, peer, ours);
        }
    }

    [Fact]
    public async Task A_receive_awaited_on_a_worker_of_another_scheduler_resumes_on_that_schedulers_workers_with_or_without_ConfigureAwait()
    {
        // wakers.md: awaited on worker k of a WorkStealingTaskScheduler (with or without ConfigureAwait(false)), the
        // continuation is queued to worker k's inbox (stealable by its peers): the reactor's own scheduler is another one.
        (IoTestContext io, ReactorSocket listener, Socket peer, ReactorSocket ours) = await OpenAsync();
        var other = new WorkStealingTaskScheduler(new WorkStealingTaskSchedulerOptions { WorkerCount = 2, ThreadNamePrefix = "vt-other" });
        try
        {
            for (int round = 0; round < 10; round++)
            {
                var buffer = new byte[8];
                var parked = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
                bool configureAwait = round % 2 == 0;
                Task<(int, string?, TaskScheduler)> run = other.Factory.StartNew(async () =>
                {
                    ValueTask<int> receive = ParkedReceive(ours, buffer);
                    parked.TrySetResult();
                    int n = await receive.ConfigureAwait(configureAwait);
                    return (n, Thread.CurrentThread.Name, TaskScheduler.Current);
                }).Unwrap();
                await parked.Task.WaitAsync(Bound);
                await peer.SendAsync(new byte[] { 1, 2 });
                (int count, string? name, TaskScheduler current) = await run.WaitAsync(Bound);
                count.Should().Be(2);
                name.Should().StartWith("vt-other", "the continuation goes back to the awaiting scheduler's workers (round {0})", round);
                if (configureAwait)
                {
                    current.Should().BeSameAs(other);
                }
            }
        }
        finally
        {
            await other.DisposeAsync().AsTask().WaitAsync(Bound);
            await CloseAsync(io, listener, peer, ours);
        }
    }

    [Fact]
    public async Task Continuations_with_ConfigureAwait_false_from_workers_and_plain_threads_never_run_on_the_reactor_thread()
    {
        (IoTestContext io, ReactorSocket listener, Socket peer, ReactorSocket ours) = await OpenAsync();
        try
        {
            var buffer = new byte[8];
            var threads = new ConcurrentBag<string>();
            for (int round = 0; round < 40; round++)
            {
                Func<Task> body = async () =>
                {
                    ValueTask<int> receive = ParkedReceive(ours, buffer);
                    _ = peer.SendAsync(new byte[] { (byte)round });
                    (await receive.ConfigureAwait(false)).Should().Be(1);
                    threads.Add(Thread.CurrentThread.Name ?? "(unnamed)");
                };

                switch (round % 3)
                {
                    case 0:
                        await io.Run(body);
                        break;
                    case 1:
                        await Task.Run(body).WaitAsync(Bound);
                        break;
                    default:
                        Exception? failure = null;
                        var thread = new Thread(() =>
                        {
                            try
                            {
                                body().GetAwaiter().GetResult();
                            }
                            catch (Exception e)
                            {
                                failure = e;
                            }
                        });
                        thread.Start();
                        (await Task.Run(() => thread.Join(Bound))).Should().BeTrue("the plain thread's receive must finish");
                        failure.Should().BeNull();
                        break;
                }
            }

            threads.Should().HaveCount(40);
            threads.Should().NotContain("IoReactor", "a continuation never runs on the reactor thread");
        }
        finally
        {
            await CloseAsync(io, listener, peer, ours);
        }
    }

    [Fact]
    public async Task Under_UseSynchronizationContext_a_socket_await_resumes_on_a_worker_with_the_schedulers_context()
    {
        var scheduler = new WorkStealingTaskScheduler(new WorkStealingTaskSchedulerOptions
        {
            WorkerCount = 2,
            ThreadNamePrefix = "vt-sync",
            UseSynchronizationContext = true,
        });
        var reactor = new IoReactor(scheduler);
        try
        {
            using ReactorSocket listener = ReactorSocket.Listen(reactor, IoTestContext.Loopback);
            using Socket peer = IoTestContext.NewPlainSocket();
            Task<ReactorSocket> accepting = scheduler.Factory.StartNew(async () => await listener.AcceptAsync()).Unwrap();
            await peer.ConnectAsync(listener.LocalEndPoint!).WaitAsync(Bound);
            using ReactorSocket ours = await accepting.WaitAsync(Bound);

            for (int round = 0; round < 20; round++)
            {
                var buffer = new byte[8];
                var parked = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
                Task<(int, string?, SynchronizationContext?, SynchronizationContext?, TaskScheduler)> run = scheduler.Factory.StartNew(async () =>
                {
                    SynchronizationContext? before = SynchronizationContext.Current;
                    ValueTask<int> receive = ParkedReceive(ours, buffer);
                    parked.TrySetResult();
                    int n = await receive;
                    return (n, Thread.CurrentThread.Name, before, SynchronizationContext.Current, TaskScheduler.Current);
                }).Unwrap();
                await parked.Task.WaitAsync(Bound);
                await peer.SendAsync(new byte[] { 1, 2, 3 });
                (int count, string? name, SynchronizationContext? before, SynchronizationContext? after, TaskScheduler _) = await run.WaitAsync(Bound);
                count.Should().Be(3);
                before.Should().NotBeNull("UseSynchronizationContext installs the scheduler's context on workers");
                after.Should().BeSameAs(before, "the continuation comes back under the scheduler's context");
                name.Should().StartWith("vt-sync", "the continuation runs on one of the scheduler's workers");
            }
        }
        finally
        {
            await Task.Run(reactor.Dispose).WaitAsync(Bound);
            await scheduler.DisposeAsync().AsTask().WaitAsync(Bound);
        }
    }

    private static readonly AsyncLocal<string?> Flowing = new();

    [Fact]
    public async Task AsyncLocal_values_flow_across_socket_awaits_and_OnCompleted_and_do_not_leak_into_later_work_on_the_worker()
    {
        (IoTestContext io, ReactorSocket listener, Socket peer, ReactorSocket ours) = await OpenAsync(workers: 1);
        try
        {
            var buffer = new byte[8];

            // Through an async method on the worker.
            string? seen = await io.Run(async () =>
            {
                Flowing.Value = "request-1";
                ValueTask<int> receive = ParkedReceive(ours, buffer);
                _ = peer.SendAsync(new byte[] { 1 });
                await receive;
                return Flowing.Value;
            });
            seen.Should().Be("request-1");

            // Through awaiter.OnCompleted (which must flow the context) from a plain thread pool thread.
            var flowed = new TaskCompletionSource<string?>(TaskCreationOptions.RunContinuationsAsynchronously);
            ValueTask<int> flowing = default;
            await Task.Run(() =>
            {
                Flowing.Value = "request-2";
                flowing = ParkedReceive(ours, buffer);
                flowing.GetAwaiter().OnCompleted(() => flowed.TrySetResult(Flowing.Value));
                Flowing.Value = null;
            });
            await peer.SendAsync(new byte[] { 2 });
            (await flowed.Task.WaitAsync(Bound)).Should().Be("request-2");
            flowing.Result.Should().Be(1);

            // A continuation registered without flow (UnsafeOnCompleted, as async methods do) on the single worker sets
            // a value; the next continuation on that worker, also registered without flow, must not see it.
            var setter = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            ValueTask<int> unsafeOne = default;
            await io.Run(() =>
            {
                unsafeOne = ParkedReceive(ours, buffer);
                unsafeOne.GetAwaiter().UnsafeOnCompleted(() =>
                {
                    Flowing.Value = "leaked";
                    setter.TrySetResult();
                });
                return Task.CompletedTask;
            });
            await peer.SendAsync(new byte[] { 3 });
            await setter.Task.WaitAsync(Bound);
            await SchedulerTestHelpers.WaitUntilAsync(() => unsafeOne.IsCompleted).WaitAsync(Bound);
            unsafeOne.Result.Should().Be(1);

            var reader = new TaskCompletionSource<string?>(TaskCreationOptions.RunContinuationsAsynchronously);
            ValueTask<int> unsafeTwo = default;
            await io.Run(() =>
            {
                unsafeTwo = ParkedReceive(ours, buffer);
                unsafeTwo.GetAwaiter().UnsafeOnCompleted(() => reader.TrySetResult(Flowing.Value));
                return Task.CompletedTask;
            });
            await peer.SendAsync(new byte[] { 4 });
            (await reader.Task.WaitAsync(Bound)).Should().BeNull("one continuation's AsyncLocal must not leak into unrelated work");
            await SchedulerTestHelpers.WaitUntilAsync(() => unsafeTwo.IsCompleted).WaitAsync(Bound);
            unsafeTwo.Result.Should().Be(1);
            (await io.Run(() => Task.FromResult(Flowing.Value))).Should().BeNull();
        }
        finally
        {
            await CloseAsync(io, listener, peer, ours);
        }
    }

    [Fact]
    public async Task A_receive_that_completed_before_its_socket_was_disposed_still_yields_its_bytes_and_the_next_call_is_refused()
    {
        (IoTestContext io, ReactorSocket listener, Socket peer, ReactorSocket ours) = await OpenAsync();
        try
        {
            var buffer = new byte[8];
            ValueTask<int> receive = ParkedReceive(ours, buffer);
            await peer.SendAsync(new byte[] { 5, 6 });
            await SchedulerTestHelpers.WaitUntilAsync(() => receive.IsCompleted).WaitAsync(Bound);
            ours.Dispose();

            (await receive).Should().Be(2, "the bytes were taken from the kernel before the disposal; dropping them loses data");
            buffer.AsSpan(0, 2).ToArray().Should().Equal(5, 6);
            Func<Task> after = async () => await ours.ReceiveAsync(buffer);
            await after.Should().ThrowAsync<ObjectDisposedException>();
            Func<Task> stale = async () => await receive;
            await stale.Should().ThrowAsync<InvalidOperationException>();
        }
        finally
        {
            await CloseAsync(io, listener, peer, ours);
        }
    }

    [Fact]
    public async Task A_cancelled_parked_receive_throws_once_then_its_stale_ValueTask_is_refused_and_the_socket_reads_on()
    {
        (IoTestContext io, ReactorSocket listener, Socket peer, ReactorSocket ours) = await OpenAsync();
        try
        {
            var buffer = new byte[8];
            using var cts = new CancellationTokenSource();
            ValueTask<int> receive = ParkedReceive(ours, buffer, cts.Token);
            await cts.CancelAsync();
            Func<Task> first = async () => await receive;
            (await first.Should().ThrowAsync<OperationCanceledException>()).Which.CancellationToken.Should().Be(cts.Token);
            Func<Task> second = async () => await receive;
            await second.Should().ThrowAsync<InvalidOperationException>();

            ValueTask<int> next = ParkedReceive(ours, buffer);
            await peer.SendAsync(new byte[] { 8 });
            (await next.AsTask().WaitAsync(Bound)).Should().Be(1);
            buffer[0].Should().Be(8);
        }
        finally
        {
            await CloseAsync(io, listener, peer, ours);
        }
    }

    [Fact]
    public async Task A_parked_receive_and_accept_awaited_from_plain_threads_fail_with_ObjectDisposedException_when_the_reactor_is_disposed()
    {
        (IoTestContext io, ReactorSocket listener, Socket peer, ReactorSocket ours) = await OpenAsync();
        try
        {
            var buffer = new byte[8];
            ValueTask<int> receive = ParkedReceive(ours, buffer);
            ValueTask<ReactorSocket> accept = listener.AcceptAsync();
            accept.IsCompleted.Should().BeFalse();
            Task<Exception?> receiveFailure = Task.Run(() => Record.ExceptionAsync(async () => await receive.ConfigureAwait(false)));
            Task<Exception?> acceptFailure = Task.Run(() => Record.ExceptionAsync(async () => await accept.ConfigureAwait(false)));

            await Task.Run(io.Reactor.Dispose).WaitAsync(Bound);
            (await receiveFailure.WaitAsync(Bound)).Should().BeOfType<ObjectDisposedException>();
            (await acceptFailure.WaitAsync(Bound)).Should().BeOfType<ObjectDisposedException>();

            // ValueTasks from the disposed reactor's sockets fail the same way, whichever way they are read.
            Func<Task> receiveAfter = async () => await ours.ReceiveAsync(buffer);
            await receiveAfter.Should().ThrowAsync<ObjectDisposedException>();
            Func<Task> sendAfter = async () => await ours.SendAsync(buffer);
            await sendAfter.Should().ThrowAsync<ObjectDisposedException>();
            Func<Task> acceptAfter = async () => await listener.AcceptAsync();
            await acceptAfter.Should().ThrowAsync<ObjectDisposedException>();
            Func<Task> connectAfter = async () => await ReactorSocket.ConnectAsync(io.Reactor, listener.LocalEndPoint ?? IoTestContext.Loopback);
            await connectAfter.Should().ThrowAsync<ObjectDisposedException>();
            Func<Task> stale = async () => await receive;
            await stale.Should().ThrowAsync<InvalidOperationException>();
        }
        finally
        {
            await CloseAsync(io, listener, peer, ours);
        }
    }

    [Fact]
    public async Task Awaiting_a_completed_accept_twice_hands_out_the_accepted_socket_once()
    {
        (IoTestContext io, ReactorSocket listener, Socket peer, ReactorSocket ours) = await OpenAsync();
        try
        {
            ValueTask<ReactorSocket> accept = listener.AcceptAsync();
            accept.IsCompleted.Should().BeFalse();
            using Socket other = IoTestContext.NewPlainSocket();
            await other.ConnectAsync(listener.LocalEndPoint!).WaitAsync(Bound);
            using ReactorSocket accepted = await accept.AsTask().WaitAsync(Bound);
            Func<Task> again = async () => await accept;
            await again.Should().ThrowAsync<InvalidOperationException>();

            // The next accept is free and gets the next connection, not the first one again.
            ValueTask<ReactorSocket> next = listener.AcceptAsync();
            using Socket third = IoTestContext.NewPlainSocket();
            await third.ConnectAsync(listener.LocalEndPoint!).WaitAsync(Bound);
            using ReactorSocket acceptedNext = await next.AsTask().WaitAsync(Bound);
            acceptedNext.Should().NotBeSameAs(accepted);
            acceptedNext.RemoteEndPoint.Should().Be(third.LocalEndPoint);
            accepted.RemoteEndPoint.Should().Be(other.LocalEndPoint);
        }
        finally
        {
            await CloseAsync(io, listener, peer, ours);
        }
    }

    /// <summary>A context that runs every post on one dedicated thread.</summary>
    private sealed class SingleThreadSynchronizationContext : SynchronizationContext, IDisposable
    {
        private readonly BlockingCollection<(SendOrPostCallback, object?)> _queue = new();
        private readonly Thread _thread;
        private int _posts;

        public SingleThreadSynchronizationContext()
        {
            _thread = new Thread(Pump) { IsBackground = true, Name = "vt-foreign-context" };
            _thread.Start();
        }

        public int ThreadId => _thread.ManagedThreadId;

        public int Posts => Volatile.Read(ref _posts);

        public override void Post(SendOrPostCallback d, object? state)
        {
            Interlocked.Increment(ref _posts);
            _queue.Add((d, state));
        }

        public override void Send(SendOrPostCallback d, object? state) => throw new NotSupportedException();

        public Task<T> Run<T>(Func<Task<T>> body)
        {
            var result = new TaskCompletionSource<T>(TaskCreationOptions.RunContinuationsAsynchronously);
            _queue.Add((_ => Start(), null));
            return result.Task;

            async void Start()
            {
                try
                {
                    result.TrySetResult(await body());
                }
                catch (Exception e)
                {
                    result.TrySetException(e);
                }
            }
        }

        public void Dispose()
        {
            _queue.CompleteAdding();
            _thread.Join(Bound);
            _queue.Dispose();
        }

        private void Pump()
        {
            SetSynchronizationContext(this);
            foreach ((SendOrPostCallback callback, object? state) in _queue.GetConsumingEnumerable())
            {
                callback(state);
            }
        }
    }
}
