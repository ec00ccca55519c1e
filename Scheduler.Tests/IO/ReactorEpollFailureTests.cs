using System.Diagnostics;
using System.IO.Pipelines;
using System.Net.Sockets;
using Scheduler.IO;
using Scheduler.Native;
using Scheduler.Tests.Scheduling;
using static Scheduler.Native.LinuxConstants;

// These tests hold ValueTasks on purpose (a pending delay).
#pragma warning disable CA2012

namespace Scheduler.Tests.IO;

/// <summary>
/// The reactor's loop when <c>epoll_wait</c> itself fails (it should not: the kernel reports EBADF or EINVAL only for
/// a bad epoll fd, and the reactor owns its own). No socket can make progress after that, so the reactor stops: every
/// socket's pending operation fails with an <see cref="ObjectDisposedException"/> that names the failure, new sockets
/// are refused the same way, and nothing else in the process (the scheduler, the reactor's later Dispose) is harmed.
/// The failure is injected through <see cref="FaultInjection.HookForTests"/> on the reactor's own thread.
/// </summary>
[Collection(nameof(FaultInjectionGroup))]
public sealed class ReactorEpollFailureTests
{
    private const string EpollFailure = "reactor stopped after an epoll failure";

    [Fact]
    public async Task An_epoll_wait_failure_fails_every_pending_operation_with_an_error_that_names_it()
    {
        await using var io = new IoTestContext();
        using ReactorSocket listener = io.Listen();
        System.Net.EndPoint listening = listener.LocalEndPoint!;
        (ReactorSocket client, ReactorSocket server) = await io.ConnectPairOnSchedulerAsync(listener);
        (ReactorConnection connection, ReactorSocket peer) = await io.ConnectionPairAsync();
        using (client)
        using (server)
        using (peer)
        await using (connection)
        {
            Task<int> receive = io.Run(async () => await server.ReceiveAsync(new byte[16]));
            Task<ReactorSocket> accept = io.Run(async () => await listener.AcceptAsync());
            Task read = io.ReadInputToEnd(connection);
            ValueTask longDelay = io.Reactor.Timers.DelayAsync(TimeSpan.FromHours(1));
            await Task.Delay(50); // let each operation reach the reactor (each fails the same way if it does not)
            receive.IsCompleted.Should().BeFalse("nothing was sent");
            accept.IsCompleted.Should().BeFalse("nobody connected");

            int waitsFailed = FailNextReactorWait(io.Reactor, EBADF);
            try
            {
                Exception receiveError = await CaughtAsync(receive);
                Exception acceptError = await CaughtAsync(accept);
                Exception readError = await CaughtAsync(read);

                foreach (Exception error in new[] { receiveError, acceptError, readError })
                {
                    error.Should().BeOfType<ObjectDisposedException>()
                        .Which.Message.Should().Contain(EpollFailure).And.Contain("epoll_wait failed", "the message carries the system call's own error");
                }

                await FluentActions.Awaiting(async () => await longDelay).Should().ThrowAsync<ObjectDisposedException>(
                    "the wheel the reactor's thread drove is disposed with it: a delay it can never fire must not hang");
            }
            finally
            {
                FaultInjection.HookForTests = null;
            }

            Volatile.Read(ref s_waitsFailed).Should().BeGreaterThan(waitsFailed, "the failure came from the injected wait");

            // A socket created on it now, and its other members, report the same failure at the call.
            FluentActions.Invoking(() => io.Listen()).Should().Throw<ObjectDisposedException>().WithMessage($"*{EpollFailure}*");
            FluentActions.Invoking(() => io.Reactor.Timers).Should().Throw<ObjectDisposedException>().WithMessage($"*{EpollFailure}*");
            (await CaughtAsync(io.Run(async () => await ReactorSocket.ConnectAsync(io.Reactor, listening))))
                .Should().BeOfType<ObjectDisposedException>().Which.Message.Should().Contain(EpollFailure);

            // The sockets that had nothing pending are closed too, and say why when used.
            (await CaughtAsync(io.Run(async () => await client.SendAsync(new byte[] { 1 }))))
                .Should().BeOfType<ObjectDisposedException>().Which.Message.Should().Contain(EpollFailure);
            client.Invoking(s => s.Shutdown(SocketShutdown.Send)).Should().Throw<ObjectDisposedException>().WithMessage($"*{EpollFailure}*");

            // The scheduler is not the reactor's to stop: work still runs on it.
            (await io.Run(() => Task.FromResult(42))).Should().Be(42);
        }

        // Disposing the stopped reactor (IoTestContext does it next) joins a thread that already exited: no hang,
        // and a second Dispose is a no-op.
        io.Reactor.Dispose();
        io.Reactor.Dispose();
    }

    [Fact]
    public async Task A_connection_whose_reactor_stops_completes_its_output_with_the_failure_too()
    {
        await using var io = new IoTestContext();
        (ReactorConnection connection, ReactorSocket peer) = await io.ConnectionPairAsync();
        using (peer)
        await using (connection)
        {
            int before = FailNextReactorWait(io.Reactor, EINVAL);
            try
            {
                // The failure lands on the reactor's next wait; a write after it finds the socket closed.
                await SchedulerTestHelpers.WaitUntilAsync(() => Volatile.Read(ref s_waitsFailed) > before);
                Volatile.Read(ref s_waitsFailed).Should().BeGreaterThan(before, "the reactor waits again within the timeout");
                // Writes until one fails, bounded by time rather than by a count: the reactor thread stops (and closes the
                // socket) after the failed wait returns, which a loaded run can hold off its core for seconds, longer than
                // a fixed number of 10-ms rounds lasts.
                Exception? error = null;
                var writing = Stopwatch.StartNew();
                while (error is null && writing.Elapsed < IoTestContext.Timeout)
                {
                    try
                    {
                        await io.Run(async () => await connection.Output.WriteAsync(new byte[1024]));
                        await Task.Delay(10);
                    }
                    catch (Exception e)
                    {
                        error = e;
                    }
                }

                error.Should().NotBeNull("the connection's send loop met the closed socket and completed its Output's reader")
                    .And.BeOfType<ObjectDisposedException>().Which.Message.Should().Contain(EpollFailure);
            }
            finally
            {
                FaultInjection.HookForTests = null;
            }

            // Whatever the write saw, the connection's input reports the reactor's failure, not a clean end of stream.
            Exception readError = await CaughtAsync(io.ReadInputToEnd(connection));
            readError.Should().BeOfType<ObjectDisposedException>().Which.Message.Should().Contain(EpollFailure);
        }
    }

    [Fact]
    public async Task An_interrupted_epoll_wait_is_not_a_failure()
    {
        // EINTR (a signal handled on the reactor's thread) returns no events, and the loop waits again.
        await using var io = new IoTestContext();
        using ReactorSocket listener = io.Listen();
        int before = FailNextReactorWait(io.Reactor, EINTR);
        try
        {
            await SchedulerTestHelpers.WaitUntilAsync(() => Volatile.Read(ref s_waitsFailed) > before);
            Volatile.Read(ref s_waitsFailed).Should().BeGreaterThan(before, "the reactor waits again within the timeout");
        }
        finally
        {
            FaultInjection.HookForTests = null;
        }

        await io.RunOnPair(listener, (client, server) => IoTestContext.AssertByteCrossesAsync(client, server, 7));
        await io.Reactor.Timers.DelayAsync(TimeSpan.FromMilliseconds(5));
    }

    private static int s_waitsFailed;

    /// <summary>
    /// Makes the next <c>epoll_wait</c> of <paramref name="reactor"/>'s thread fail with <paramref name="errno"/> (once),
    /// and wakes the thread so that it waits again at once. Returns the failure count before; the caller clears the hook.
    /// </summary>
    private static int FailNextReactorWait(IoReactor reactor, int errno)
    {
        int thread = reactor.ThreadIdForTests;
        int before = Volatile.Read(ref s_waitsFailed);
        int armed = 1;
        FaultInjection.HookForTests = name =>
        {
            if (name != "epoll_wait" || Environment.CurrentManagedThreadId != thread || Interlocked.Exchange(ref armed, 0) == 0)
            {
                return 0;
            }

            Interlocked.Increment(ref s_waitsFailed);
            return errno;
        };

        // A timer due at once wakes the reactor from its current wait (a wait asks the hook before it starts). It fires,
        // or fails with the wheel's disposal when the failed wait stops the reactor first: either is fine here.
        _ = reactor.Timers.DelayAsync(TimeSpan.FromMilliseconds(1)).AsTask().ContinueWith(
            static t => _ = t.Exception, CancellationToken.None, TaskContinuationOptions.ExecuteSynchronously, TaskScheduler.Default);
        return before;
    }

    private static async Task<Exception> CaughtAsync(Task task) =>
        await task.ExceptionWithin(IoTestContext.Timeout)
        ?? throw new InvalidOperationException("The operation completed successfully after the reactor stopped.");
}
