using System.Net;
using System.Net.Sockets;
using Scheduler.IO;
using Scheduler.Native;
using Scheduler.Tests.Scheduling;
using static Scheduler.Native.LinuxConstants;

namespace Scheduler.Tests.IO;

/// <summary>
/// Tests that set the process-wide <see cref="FaultInjection.HookForTests"/>, and read which descriptors the failing
/// step had opened from the process's fd table, run alone.
/// </summary>
[CollectionDefinition(nameof(FaultInjectionGroup), DisableParallelization = true)]
public sealed class FaultInjectionGroup;

/// <summary>
/// A reactor or socket whose creation fails part way (a system call the kernel refuses, injected here through
/// <see cref="FaultInjection.HookForTests"/>) closes every descriptor it had opened, and removes a Unix domain socket
/// file it had created, before it throws.
/// </summary>
[Collection(nameof(FaultInjectionGroup))]
public sealed class FailurePathLeakTests
{
    [Theory]
    [InlineData("epoll_create1", 0)]
    [InlineData("eventfd", 1)]
    [InlineData("epoll_ctl", 2)]
    public void An_epoll_backend_that_fails_to_set_up_closes_what_it_opened(string call, int openedAtFailure)
    {
        FailedStep step = Fail(call, ENOMEM, () => new EpollBackend().Dispose());

        step.Exception.Should().BeOfType<SocketException>().Which.Message.Should().Contain(call);
        step.OpenedBeforeFailure.Should().HaveCount(openedAtFailure, "the epoll instance (and the eventfd) were open");
        step.StillOpen().Should().BeEmpty("every descriptor the constructor opened is closed when it throws");
    }

    [Theory]
    [InlineData("epoll_ctl")]
    [InlineData("pthread_create")]
    public void A_reactor_that_fails_to_start_closes_its_epoll_instance_and_eventfd(string call)
    {
        var scheduler = new WorkStealingTaskScheduler(1);
        using var disposeScheduler = SchedulerTestHelpers.DisposeBoundedOnExit(scheduler);
        FailedStep step = Fail(call, EAGAIN, () => new IoReactor(scheduler).Dispose());

        step.Exception.Should().Match<Exception>(e => e is SocketException || e is OutOfMemoryException);
        step.OpenedBeforeFailure.Should().HaveCount(2, "the epoll instance and the eventfd were open");
        step.StillOpen().Should().BeEmpty("a reactor that throws from its constructor cannot be disposed by anyone");
    }

    [Theory]
    [InlineData("listen")]
    [InlineData("epoll_ctl")]
    public async Task A_unix_domain_listener_that_fails_after_bind_removes_its_socket_file_and_closes_its_fd(string call)
    {
        string path = Path.Combine(Path.GetTempPath(), $"reactor-fail-{Guid.NewGuid():N}.sock");
        try
        {
            await using var io = new IoTestContext();
            FailedStep step = Fail(call, EADDRINUSE, () => io.Listen(new UnixDomainSocketEndPoint(path)).Dispose());

            step.Exception.Should().BeOfType<SocketException>().Which.Message.Should().Contain(call);
            step.OpenedBeforeFailure.Should().ContainSingle("the listener's socket was open");
            step.StillOpen().Should().BeEmpty();
            File.Exists(path).Should().BeFalse("the bind created the file, and the listener it was made for never came to be");

            // The path is free again: a retry binds it.
            using ReactorSocket retry = io.Listen(new UnixDomainSocketEndPoint(path));
            File.Exists(path).Should().BeTrue();
        }
        finally
        {
            File.Delete(path);
        }
    }

    [Fact]
    public async Task A_unix_domain_listener_whose_bind_fails_leaves_the_file_already_there_alone()
    {
        // Someone else's file (here a plain one): bind fails with EADDRINUSE and must not take it away.
        string path = Path.Combine(Path.GetTempPath(), $"reactor-taken-{Guid.NewGuid():N}.sock");
        await File.WriteAllTextAsync(path, "not ours");
        try
        {
            await using var io = new IoTestContext();
            FluentActions.Invoking(() => io.Listen(new UnixDomainSocketEndPoint(path)))
                .Should().Throw<SocketException>().Which.SocketErrorCode.Should().Be(SocketError.AddressAlreadyInUse);
            (await File.ReadAllTextAsync(path)).Should().Be("not ours");
        }
        finally
        {
            File.Delete(path);
        }
    }

    [Theory]
    [InlineData("setsockopt", "setsockopt(SO_REUSEADDR)")]
    [InlineData("listen", "listen")]
    [InlineData("epoll_ctl", "epoll_ctl")]
    public async Task A_tcp_listener_that_fails_to_set_up_closes_its_fd_and_names_the_call(string call, string named)
    {
        await using var io = new IoTestContext();
        FailedStep step = Fail(call, ENOMEM, () => io.Listen().Dispose());

        step.Exception.Should().BeOfType<SocketException>().Which.Message.Should().Contain(named);
        step.OpenedBeforeFailure.Should().ContainSingle();
        step.StillOpen().Should().BeEmpty();
    }

    [Theory]
    [InlineData("setsockopt", "setsockopt(TCP_NODELAY)")]
    [InlineData("connect", "connect to 127.0.0.1:")]
    [InlineData("epoll_ctl", "epoll_ctl")]
    public async Task A_connect_that_fails_to_set_up_closes_its_fd_and_names_the_call(string call, string named)
    {
        await using var io = new IoTestContext();
        using ReactorSocket listener = io.Listen();
        EndPoint endPoint = listener.LocalEndPoint!;

        // A TCP connect to loopback may be connected at once or in progress; either way the failure is synchronous or
        // the returned task's, and the fd must be closed.
        FailedStep step = Fail(call, ENOMEM, () => ReactorSocket.ConnectAsync(io.Reactor, endPoint).AsTask().GetAwaiter().GetResult().Dispose());

        step.Exception.Should().BeOfType<SocketException>().Which.Message.Should().Contain(named);
        step.OpenedBeforeFailure.Should().NotBeEmpty();
        step.StillOpen().Should().BeEmpty();
    }

    [Fact]
    public async Task A_connect_interrupted_by_a_signal_is_made_again()
    {
        await using var io = new IoTestContext();
        using ReactorSocket listener = io.Listen();
        int thread = Environment.CurrentManagedThreadId;
        int tries = 0;
        FaultInjection.HookForTests = name => name == "connect" && Environment.CurrentManagedThreadId == thread && ++tries == 1 ? EINTR : 0;
        ValueTask<ReactorSocket> connecting;
        try
        {
            connecting = ReactorSocket.ConnectAsync(io.Reactor, listener.LocalEndPoint!); // every try is made within the call
        }
        finally
        {
            FaultInjection.HookForTests = null;
        }

        tries.Should().Be(2, "the interrupted try is made again, once");
        using ReactorSocket client = await connecting.AsTask().WaitAsync(IoTestContext.Timeout);
        using ReactorSocket server = await io.Run(async () => await listener.AcceptAsync());
        await io.Run(() => IoTestContext.AssertByteCrossesAsync(client, server, 5));
    }

    [Fact]
    public async Task A_unix_domain_connect_waiting_for_room_tries_again_about_every_64_ms()
    {
        // The pause between tries doubles from 1 ms and stops growing at 64 ms: 2 s of waiting makes at most 36 tries
        // (7 in the first 127 ms, then one per 64 ms), about 20 here, as each pause ends a little late. Left growing,
        // the pauses allow 6 at most; shrinking to zero, thousands.
        using var backlog = new UnixBacklogPath("backlog-tries");
        await using var io = new IoTestContext();
        using ReactorSocket listener = io.Listen(backlog.EndPoint, backlog: 1);
        Task<ReactorSocket>? waiting = await backlog.ConnectUntilOneWaitsAsync(io);
        waiting.Should().NotBeNull("a connect to a full backlog waits");

        int tries = 0;
        FaultInjection.HookForTests = name =>
        {
            if (name == "connect")
            {
                Interlocked.Increment(ref tries); // the tries after a pause run wherever the pause ended
            }

            return 0;
        };
        try
        {
            await Task.Delay(2000);
        }
        finally
        {
            FaultInjection.HookForTests = null;
        }

        waiting!.IsCompleted.Should().BeFalse("nothing was accepted yet");
        Volatile.Read(ref tries).Should().BeInRange(8, 100);

        using ReactorSocket first = await io.Run(async () => await listener.AcceptAsync());
        using ReactorSocket client = await waiting.WaitAsync(IoTestContext.Timeout);
    }

    [Theory]
    [InlineData("setsockopt", "setsockopt(TCP_NODELAY)")]
    [InlineData("epoll_ctl", "epoll_ctl")]
    public async Task An_accept_that_fails_to_set_up_the_accepted_socket_closes_it_and_names_the_call(string call, string named)
    {
        await using var io = new IoTestContext();
        using ReactorSocket listener = io.Listen();
        using Socket client = IoTestContext.NewPlainSocket();
        client.Connect(listener.LocalEndPoint!); // queued in the kernel: the accept below takes it on this thread

        FailedStep step = Fail(call, ENOMEM, () => listener.AcceptAsync().AsTask().GetAwaiter().GetResult().Dispose());

        step.Exception.Should().BeOfType<SocketException>().Which.Message.Should().Contain(named);
        step.OpenedBeforeFailure.Should().ContainSingle("the accepted connection");
        step.StillOpen().Should().BeEmpty();

        // The listener stays usable.
        using Socket second = IoTestContext.NewPlainSocket();
        await second.ConnectAsync(listener.LocalEndPoint!);
        using ReactorSocket accepted = await io.Run(async () => await listener.AcceptAsync());
    }

    [Theory]
    [InlineData("listen")]
    [InlineData("connect")]
    [InlineData("accept")]
    [InlineData("epoll")]
    public async Task A_handle_whose_allocation_fails_leaves_no_descriptor_open(string step)
    {
        // Out of memory for the SafeHandle that is to own a new fd: the fd must not outlive the failure. socket(2) comes
        // after the handle's allocation, and an fd that exists before it (accept4's, the eventfd) is closed.
        await using var io = new IoTestContext();
        using ReactorSocket listener = io.Listen();
        EndPoint endPoint = listener.LocalEndPoint!;
        using Socket client = IoTestContext.NewPlainSocket();
        if (step == "accept")
        {
            client.Connect(endPoint); // queued in the kernel: the accept below takes it on this thread
        }

        Action action = step switch
        {
            "listen" => () => io.Listen().Dispose(),
            "connect" => () => ReactorSocket.ConnectAsync(io.Reactor, endPoint).AsTask().GetAwaiter().GetResult().Dispose(),
            "accept" => () => listener.AcceptAsync().AsTask().GetAwaiter().GetResult().Dispose(),
            _ => () => new EpollBackend().Dispose(),
        };

        FailedStep failed = Fail("SafeFileDescriptor", ENOMEM, action);

        failed.Exception.Should().BeOfType<OutOfMemoryException>();
        failed.StillOpen().Should().BeEmpty("a descriptor whose owner could not be allocated is closed (or never opened)");
    }

    [Fact]
    public async Task A_registration_table_that_fails_to_grow_leaves_the_reactor_usable()
    {
        // The table starts with 64 slots: the 65th registration grows it. Out of memory there fails that one socket;
        // the next one must still register (it met an IndexOutOfRangeException, and so did every later one).
        await using var io = new IoTestContext();
        var listeners = new List<ReactorSocket>();
        try
        {
            while (io.Reactor.RegisteredCount < 64)
            {
                listeners.Add(io.Listen());
            }

            FailedStep step = Fail("registration-table", ENOMEM, () => io.Listen().Dispose());
            step.Exception.Should().BeOfType<OutOfMemoryException>();
            step.StillOpen().Should().BeEmpty();

            for (int i = 0; i < 3; i++)
            {
                listeners.Add(io.Listen());
            }

            io.Reactor.RegisteredCount.Should().Be(67);
            using ReactorSocket last = listeners[^1];
            (ReactorSocket client, ReactorSocket server) = await io.Run(() => io.ConnectPairAsync(last));
            client.Dispose();
            server.Dispose();
        }
        finally
        {
            listeners.ForEach(l => l.Dispose());
        }
    }

    /// <summary>What <see cref="Fail"/> saw: the exception, and the descriptors opened when the failing call was asked.</summary>
    private sealed record FailedStep(Exception? Exception, IReadOnlyDictionary<int, string> OpenedBeforeFailure)
    {
        /// <summary>The descriptors of <see cref="OpenedBeforeFailure"/> that are still open (same fd, same target).</summary>
        public IReadOnlyDictionary<int, string> StillOpen()
        {
            Dictionary<int, string> now = ReactorDescriptors.Open();
            return OpenedBeforeFailure.Where(d => now.TryGetValue(d.Key, out string? target) && target == d.Value).ToDictionary();
        }
    }

    /// <summary>
    /// Runs <paramref name="action"/> with <paramref name="call"/> failing with <paramref name="errno"/> on this thread
    /// (once: a later call of that name succeeds), and returns what it threw and which sockets, epoll instances and
    /// eventfds had been opened since it started when the call was asked.
    /// </summary>
    private static FailedStep Fail(string call, int errno, Action action)
    {
        int thread = Environment.CurrentManagedThreadId;
        Dictionary<int, string> before = ReactorDescriptors.Open();
        Dictionary<int, string>? atFailure = null;
        FaultInjection.HookForTests = name =>
        {
            if (name != call || atFailure is not null || Environment.CurrentManagedThreadId != thread)
            {
                return 0;
            }

            atFailure = ReactorDescriptors.Open();
            return errno;
        };

        Exception? thrown = null;
        try
        {
            action();
        }
        catch (Exception e)
        {
            thrown = e;
        }
        finally
        {
            FaultInjection.HookForTests = null;
        }

        atFailure.Should().NotBeNull($"the code under test asks for {call}");
        thrown.Should().NotBeNull($"{call} failed");
        return new FailedStep(thrown, atFailure!.Where(d => !before.TryGetValue(d.Key, out string? target) || target != d.Value).ToDictionary());
    }
}
