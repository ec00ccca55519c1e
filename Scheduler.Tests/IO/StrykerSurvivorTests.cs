using System.Buffers;
using System.Net.Sockets;
using System.Runtime.CompilerServices;
using Scheduler.IO;

namespace Scheduler.Tests.IO;

/// <summary>
/// Tests written from a Stryker.NET run over Scheduler/IO: each one checks a behaviour that a surviving mutant (named in
/// its comment) showed no test checked, and passes on the unmutated code. The run mutated
/// <c>Scheduler/IO/ReactorOperation.cs</c>, the state machine every socket operation goes through.
/// </summary>
public sealed class StrykerSurvivorTests
{
    private static readonly TimeSpan Bound = TimeSpan.FromSeconds(10);

    // Kills: ReactorOperation.cs Run, `if (Socket.IsDisposed) { TryFinishFromPending(...) }` removed (or its condition
    // made false) — a Dispose that came while the caller's own first attempt was under way found the operation Busy
    // (not Pending) and could not fail it; only the caller's check after publishing Pending does, and nothing checked it.
    [Fact]
    public async Task A_socket_disposed_during_the_callers_first_attempt_fails_the_receive_that_parks_after_it()
    {
        await using var io = new IoTestContext();
        using ReactorSocket listener = io.Listen();
        using Socket peer = IoTestContext.NewPlainSocket();
        using ReactorSocket ours = await io.AcceptConnectedAsync(listener, peer);
        using var memory = new GatedMemory(16);

        // The caller's attempt reads the buffer's span before its recv: the gate holds the caller there (Busy). Armed
        // after taking the Memory, whose creation reads the span too.
        Memory<byte> buffer = memory.Memory;
        memory.Arm();
        Task<int> receive = Task.Run(() => ours.ReceiveAsync(buffer).AsTask());
        memory.Entered.Wait(Bound).Should().BeTrue("the receive's first attempt reads its buffer's span");

        // Disposed while the caller owns the operation: Dispose cannot finish it. The attempt still holds its reference to
        // the fd, so its recv says EAGAIN and the receive parks, on a socket that will never report another edge.
        ours.Dispose();
        memory.Release();

        Func<Task> awaiting = () => receive.WaitAsync(Bound);
        await awaiting.Should().ThrowAsync<ObjectDisposedException>("the caller must see the disposal it raced and fail the receive it parked");
    }

    // Kills: ReactorOperation.cs Run, `else if (cancellationToken.IsCancellationRequested) { TryFinishFromPending(...) }`
    // removed (or its condition made false) — a token cancelled during the caller's first attempt runs its callback
    // synchronously inside the registration, before Pending is published, so the callback's CAS fails; only this check
    // ends the receive, and nothing checked it.
    [Fact]
    public async Task A_token_cancelled_during_the_callers_first_attempt_cancels_the_receive_that_parks_after_it()
    {
        await using var io = new IoTestContext();
        using ReactorSocket listener = io.Listen();
        using Socket peer = IoTestContext.NewPlainSocket();
        using ReactorSocket ours = await io.AcceptConnectedAsync(listener, peer);
        using var memory = new GatedMemory(16);
        using var cts = new CancellationTokenSource();

        // Not cancelled when the receive starts (that would refuse it before any attempt), cancelled during its attempt.
        Memory<byte> gated = memory.Memory;
        memory.Arm();
        Task<int> receive = Task.Run(() => ours.ReceiveAsync(gated, cts.Token).AsTask());
        memory.Entered.Wait(Bound).Should().BeTrue("the receive's first attempt reads its buffer's span");
        await cts.CancelAsync();
        memory.Release();

        Func<Task> awaiting = () => receive.WaitAsync(Bound);
        (await awaiting.Should().ThrowAsync<OperationCanceledException>("no byte comes, and the token was cancelled"))
            .Which.CancellationToken.Should().Be(cts.Token);

        // The socket stays usable: the operation was released, and the next receive gets the next byte.
        await peer.SendAsync(new byte[] { 9 });
        var buffer = new byte[4];
        (await ours.ReceiveAsync(buffer).AsTask().WaitAsync(Bound)).Should().Be(1);
        buffer[0].Should().Be(9);
    }

    // Kills: ReactorOperation.cs Run, the first `if (cancellationToken.IsCancellationRequested) { Release(); return
    // ValueTask.FromCanceled(...); }` removed — an already-cancelled token was only checked after an attempt that said
    // EAGAIN (the existing test cancels with nothing queued), so with bytes queued a cancelled receive consumed them and a
    // cancelled send sent its buffer, though the contract says a cancelled receive consumes nothing.
    [Fact]
    public async Task A_receive_or_send_with_an_already_cancelled_token_moves_no_byte_even_when_it_could()
    {
        await using var io = new IoTestContext();
        using ReactorSocket listener = io.Listen();
        using Socket peer = IoTestContext.NewPlainSocket();
        using ReactorSocket ours = await io.AcceptConnectedAsync(listener, peer);
        using var cts = new CancellationTokenSource();
        await cts.CancelAsync();
        var buffer = new byte[16];

        // A byte is queued: the receive could complete at once, but its token was cancelled before it started.
        await SendAndAwaitEdge(ours, peer, 6);
        Func<Task> receive = () => ours.ReceiveAsync(buffer, cts.Token).AsTask().WaitAsync(Bound);
        (await receive.Should().ThrowAsync<OperationCanceledException>()).Which.CancellationToken.Should().Be(cts.Token);

        // The socket's buffers have room: the send could complete at once, but its token was cancelled before it started.
        Func<Task> send = () => ours.SendAsync(new byte[] { 99 }, cts.Token).AsTask().WaitAsync(Bound);
        (await send.Should().ThrowAsync<OperationCanceledException>()).Which.CancellationToken.Should().Be(cts.Token);

        // Nothing moved, and both directions are free: the queued byte is still there, and the peer's first byte is the next send's.
        (await ours.ReceiveAsync(buffer).AsTask().WaitAsync(Bound)).Should().Be(1);
        buffer[0].Should().Be(6);
        (await ours.SendAsync(new byte[] { 7 }).AsTask().WaitAsync(Bound)).Should().Be(1);
        var one = new byte[1];
        await IoTestContext.ReceiveExactlyAsync(peer, one).WaitAsync(Bound);
        one[0].Should().Be(7);
    }

    // Kills: ReactorOperation.cs Attempt, `LastAttemptDrained = false;` removed — an attempt that ends in an exception (the
    // caller's buffer threw) left the previous attempt's drain proof standing and recorded it for the current sequence,
    // so the next receive skipped its recv and parked on bytes already queued, waiting for an edge that had come already.
    // Also kills: TryExecuteGuarded, `return true` -> `false` in the catch — the exception was dropped and the receive
    // parked instead of failing with it.
    [Fact]
    public async Task An_attempt_that_throws_proves_nothing_drained_and_the_next_receive_reads_the_queued_bytes()
    {
        await using var io = new IoTestContext();
        using ReactorSocket listener = io.Listen();
        using Socket peer = IoTestContext.NewPlainSocket();
        using ReactorSocket ours = await io.AcceptConnectedAsync(listener, peer);
        var buffer = new byte[16];

        // A short read: it proves the socket drained at the sequence it read.
        await SendAndAwaitEdge(ours, peer, 1);
        ValueTask<int> first = ours.ReceiveAsync(buffer);
        first.IsCompleted.Should().BeTrue("the byte was queued before the receive");
        (await first).Should().Be(1);

        // A new byte and its edge: the proof is stale, so the next receive attempts; its buffer throws.
        await SendAndAwaitEdge(ours, peer, 2);
        int skipped = ours.ReceiveAttemptsSkipped;
        using var throwing = new ThrowingMemory();
        Memory<byte> unreadable = throwing.Memory;
        throwing.Arm();
        Func<Task> failing = () => ours.ReceiveAsync(unreadable).AsTask().WaitAsync(Bound);
        await failing.Should().ThrowAsync<InvalidOperationException>().WithMessage(ThrowingMemory.Message);

        // That attempt proved nothing: the byte is still queued, and no edge will come for it again.
        ValueTask<int> next = ours.ReceiveAsync(buffer);
        next.IsCompleted.Should().BeTrue("the byte is queued: the receive must try its recv, not wait for an edge");
        (await next).Should().Be(1);
        buffer[0].Should().Be(2);
        ours.ReceiveAttemptsSkipped.Should().Be(skipped);
    }

    // Kills: ReactorOperation.cs Release, `ClearParameters();` removed — a finished operation kept its caller's buffer
    // (the socket's reusable operation pinned it from the heap until the next call of that direction), which the
    // operation's contract rules out ("a finished operation pins nothing") and nothing checked.
    [Fact]
    public async Task A_finished_receive_or_send_keeps_no_reference_to_the_callers_buffer()
    {
        await using var io = new IoTestContext();
        using ReactorSocket listener = io.Listen();
        using Socket peer = IoTestContext.NewPlainSocket();
        using ReactorSocket ours = await io.AcceptConnectedAsync(listener, peer);
        await SendAndAwaitEdge(ours, peer, 3);

        WeakReference received = ReceiveIntoAFreshBuffer(ours);
        WeakReference sent = SendFromAFreshBuffer(ours);
        Collected.Await(received, sent);

        received.IsAlive.Should().BeFalse("the receive finished: its operation must have dropped the caller's buffer");
        sent.IsAlive.Should().BeFalse("the send finished: its operation must have dropped the caller's buffer");
        GC.KeepAlive(ours);
    }

    // Kills: ReactorOperation.cs Release, `_cancellationToken = default;` removed, and GetResult, `_registration = default;`
    // removed — either way the socket's reusable operation kept a finished receive's token (its source, reachable
    // through the token or through the disposed registration's node) alive until a later receive with a token replaced
    // it: a per-request CancellationTokenSource, and whatever its callbacks hold, leaked with every idle socket.
    [Fact]
    public async Task A_finished_parked_receive_keeps_no_reference_to_its_cancellation_source()
    {
        await using var io = new IoTestContext();
        using ReactorSocket listener = io.Listen();
        using Socket peer = IoTestContext.NewPlainSocket();
        using ReactorSocket ours = await io.AcceptConnectedAsync(listener, peer);
        var buffer = new byte[16];

        (WeakReference source, Task<int> receive) = StartReceiveWithItsOwnToken(ours, buffer);
        receive.IsCompleted.Should().BeFalse("nothing was sent yet, so the receive parks with its token registered");
        await peer.SendAsync(new byte[] { 4 });
        (await receive.WaitAsync(Bound)).Should().Be(1);
        buffer[0].Should().Be(4);

        // A later receive without a token completes synchronously: it must not be what drops the source either.
        await SendAndAwaitEdge(ours, peer, 5);
        (await ours.ReceiveAsync(buffer)).Should().Be(1);
        Collected.Await(source);

        source.IsAlive.Should().BeFalse("the receive finished: its operation must have dropped its token and registration");
        GC.KeepAlive(ours);
    }

    // Kills: ReactorOperation.cs Run, `_registration.Dispose();` removed where the caller takes the operation back after
    // an edge (`Interlocked.CompareExchange(ref _state, Busy, Pending) == Pending`) — the registration it made before
    // publishing Pending was overwritten by the retry's own and never disposed, so the send's token, firing after the
    // send had finished, still cancelled whatever operation the socket's send side ran then. The edge has to come
    // during the caller's own attempt: the gate in the buffer holds the caller between two send() calls for that.
    // Also kills, on the same path: `== Pending` -> `!= Pending` in that CompareExchange (the caller left the operation
    // Busy and returned a ValueTask nobody would complete) and `cancellationToken.IsCancellationRequested` negated (an
    // uncancelled send came back cancelled).
    [Fact]
    public async Task A_send_that_took_its_operation_back_after_an_edge_leaves_no_registration_to_cancel_the_next_send()
    {
        // Far more than the kernel buffers of both ends can take: the first send() takes what fits, the next says EAGAIN.
        const int Length = 16 << 20;
        await using var io = new IoTestContext();
        using ReactorSocket listener = io.Listen();
        using Socket peer = IoTestContext.NewPlainSocket();
        peer.ReceiveBufferSize = 64 << 10;
        using ReactorSocket ours = await io.AcceptConnectedAsync(listener, peer);
        using var memory = new GatedMemory(Length);
        using var first = new CancellationTokenSource();
        var chunk = new byte[256 << 10];
        (Task<int> send, int received) = await StartSendHeldAcrossAnEdge(ours, peer, memory, chunk, first);

        // The attempt fills the room and says EAGAIN; the caller registers the token, publishes Pending, sees the edge it
        // missed and takes the operation back to retry. The send then completes as the peer reads the rest.
        memory.Release();
        await ReceiveCount(peer, chunk, Length - received);
        (await send.WaitAsync(Bound)).Should().Be(Length);

        // The next send has no token and parks; the first send's token fires meanwhile.
        Task<int> next = ours.SendAsync(new byte[Length]).AsTask();
        next.IsCompleted.Should().BeFalse("the peer does not read, so the send must wait for room");
        await first.CancelAsync();

        await ReceiveCount(peer, chunk, Length);
        Exception? failure = await Record.ExceptionAsync(() => next.WaitAsync(Bound));
        failure.Should().BeNull("the next send had no token: the first send's token must not reach it");
        (await next).Should().Be(Length);
    }

    // Kills: ReactorOperation.cs Run, `Release();` removed where the caller, having taken the operation back after an edge,
    // finds its token cancelled — the send failed with OperationCanceledException but left the send side claimed, so
    // every later send on the socket was refused.
    [Fact]
    public async Task A_send_cancelled_when_its_caller_takes_it_back_after_an_edge_frees_the_send_side()
    {
        const int Length = 16 << 20;
        await using var io = new IoTestContext();
        using ReactorSocket listener = io.Listen();
        using Socket peer = IoTestContext.NewPlainSocket();
        peer.ReceiveBufferSize = 64 << 10;
        using ReactorSocket ours = await io.AcceptConnectedAsync(listener, peer);
        using var memory = new GatedMemory(Length);
        using var cts = new CancellationTokenSource();
        var chunk = new byte[256 << 10];
        (Task<int> send, _) = await StartSendHeldAcrossAnEdge(ours, peer, memory, chunk, cts);

        // Cancelled while the caller owns the operation: its registration's callback runs inside the registration and
        // cannot finish it; the caller, taking the operation back for the edge it missed, sees the token instead.
        await cts.CancelAsync();
        memory.Release();
        Func<Task> awaiting = () => send.WaitAsync(Bound);
        (await awaiting.Should().ThrowAsync<OperationCanceledException>()).Which.CancellationToken.Should().Be(cts.Token);

        // The send side is free: the next send is accepted and completes once the peer reads what the cancelled one sent.
        Task<int> next = ours.SendAsync(new byte[] { 42 }).AsTask();
        Task<int>? receive = null;
        while (!next.IsCompleted)
        {
            receive ??= peer.ReceiveAsync(chunk.AsMemory()).AsTask();
            if (await Task.WhenAny(next, receive).WaitAsync(Bound) == receive)
            {
                (await receive).Should().BePositive();
                receive = null;
            }
        }

        (await next).Should().Be(1);

        // Our end of stream ends the peer's reads (one may still wait: the send completes as the kernel takes the byte).
        ours.Shutdown(SocketShutdown.Send);
        while (await (receive ?? peer.ReceiveAsync(chunk.AsMemory()).AsTask()).WaitAsync(Bound) > 0)
        {
            receive = null;
        }
    }

    // Kills: ReactorOperation.cs GetResult, the message of "The operation has not completed yet; await the ValueTask ..."
    // mutated to "" — reading a parked operation's result directly (a common misuse of ValueTask) must say what to do.
    [Fact]
    public async Task Reading_the_result_of_a_parked_receive_says_to_await_it_and_the_receive_still_completes()
    {
        await using var io = new IoTestContext();
        using ReactorSocket listener = io.Listen();
        using Socket peer = IoTestContext.NewPlainSocket();
        using ReactorSocket ours = await io.AcceptConnectedAsync(listener, peer);
        var buffer = new byte[16];

        // Misused on purpose: the result of a ValueTask that has not completed.
#pragma warning disable CA2012
        ValueTask<int> pending = ours.ReceiveAsync(buffer);
        pending.IsCompleted.Should().BeFalse("nothing was sent yet");
        Action read = () => _ = pending.Result;
#pragma warning restore CA2012
        read.Should().Throw<InvalidOperationException>().WithMessage("*not completed yet*await the ValueTask*");

        await peer.SendAsync(new byte[] { 8 });
        (await pending.AsTask().WaitAsync(Bound)).Should().Be(1);
        buffer[0].Should().Be(8);
    }

    /// <summary>
    /// Starts a send of all of <paramref name="memory"/> (with <paramref name="sendCancellation"/>'s token) on another thread and holds the caller's attempt (at its second
    /// read of the span, between two send() calls, the first of which filled the buffers) while the peer reads until the
    /// reactor reports room: an edge that comes while the caller still owns the operation. Returns the send and what the
    /// peer read; the caller releases the gate.
    /// </summary>
    private static async Task<(Task<int> Send, int Received)> StartSendHeldAcrossAnEdge(
        ReactorSocket ours, Socket peer, GatedMemory memory, byte[] chunk, CancellationTokenSource sendCancellation)
    {
        ReadOnlyMemory<byte> gated = memory.Memory;
        memory.Arm(calls: 2);

        // Read before the send starts: the kernel may report room as soon as the first send() has filled the buffer (its
        // bytes move on to the peer's side), and with the caller held no later send() asks for another report.
        int sequence = ours.ReadSequence(isWrite: true);
        Task<int> send = Task.Run(() => ours.SendAsync(gated, sendCancellation.Token).AsTask());
        memory.Entered.Wait(Bound).Should().BeTrue("the first send() takes only what fits, so the attempt sends again");

        // Only what is there is read: once the peer has everything the held caller sent, a receive would wait for good
        // if the reactor thread, preempted, had not reported the room yet (seen once under load).
        int received = 0;
        var waited = System.Diagnostics.Stopwatch.StartNew();
        while (ours.ReadSequence(isWrite: true) == sequence)
        {
            waited.Elapsed.Should().BeLessThan(Bound, "reading makes room, which the reactor reports");
            int available = peer.Available;
            if (available > 0)
            {
                received += peer.Receive(chunk, 0, Math.Min(available, chunk.Length), SocketFlags.None);
            }
            else
            {
                await Task.Delay(1);
            }
        }

        return (send, received);
    }

    /// <summary>Reads exactly <paramref name="count"/> bytes on <paramref name="peer"/>, each receive bounded.</summary>
    private static async Task ReceiveCount(Socket peer, byte[] chunk, int count)
    {
        while (count > 0)
        {
            int n = await peer.ReceiveAsync(chunk.AsMemory(0, Math.Min(count, chunk.Length))).AsTask().WaitAsync(Bound);
            n.Should().BePositive("the peer sends until it has sent everything");
            count -= n;
        }
    }

    /// <summary>Sends one byte from the peer and waits until the reactor has reported its edge (bumped the read sequence).</summary>
    private static async Task SendAndAwaitEdge(ReactorSocket ours, Socket peer, byte value)
    {
        int before = ours.ReadSequence(isWrite: false);
        (await peer.SendAsync(new[] { value })).Should().Be(1);
        var waited = System.Diagnostics.Stopwatch.StartNew();
        while (ours.ReadSequence(isWrite: false) == before)
        {
            waited.Elapsed.Should().BeLessThan(Bound, "the reactor reports every byte that arrives on a drained socket");
            await Task.Delay(1);
        }
    }

    // Synchronous on purpose (an async helper would keep its locals in a state machine): each ValueTask's result is read
    // only after checking that it completed.
#pragma warning disable CA2012
    [MethodImpl(MethodImplOptions.NoInlining)]
    private static WeakReference ReceiveIntoAFreshBuffer(ReactorSocket ours)
    {
        var buffer = new byte[16];
        ValueTask<int> receive = ours.ReceiveAsync(buffer);
        receive.IsCompleted.Should().BeTrue("the byte was queued before the receive");
        receive.Result.Should().Be(1);
        return new WeakReference(buffer);
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private static WeakReference SendFromAFreshBuffer(ReactorSocket ours)
    {
        var buffer = new byte[16];
        ValueTask<int> send = ours.SendAsync(buffer);
        send.IsCompleted.Should().BeTrue("16 bytes fit an idle socket's send buffer");
        send.Result.Should().Be(16);
        return new WeakReference(buffer);
    }
#pragma warning restore CA2012

    [MethodImpl(MethodImplOptions.NoInlining)]
    private static (WeakReference Source, Task<int> Receive) StartReceiveWithItsOwnToken(ReactorSocket ours, byte[] buffer)
    {
        var cts = new CancellationTokenSource();
        return (new WeakReference(cts), ours.ReceiveAsync(buffer, cts.Token).AsTask());
    }

    /// <summary>
    /// Memory whose span, once armed, cannot be read: an attempt into it fails with an unexpected exception. (Armed after
    /// taking <see cref="MemoryManager{T}.Memory"/>, which reads the span for its length.)
    /// </summary>
    private sealed class ThrowingMemory : MemoryManager<byte>
    {
        public const string Message = "This buffer's span cannot be read.";
        private readonly byte[] _array = new byte[16];
        private volatile bool _armed;

        public void Arm() => _armed = true;

        public override Span<byte> GetSpan() => _armed ? throw new InvalidOperationException(Message) : _array;

        public override MemoryHandle Pin(int elementIndex = 0) => throw new NotSupportedException();

        public override void Unpin()
        {
        }

        protected override void Dispose(bool disposing)
        {
        }
    }
}
