using System.Diagnostics;
using System.Runtime.Versioning;
using Scheduler.IO;
using Scheduler.Tests.Scheduling;

namespace Scheduler.Tests.IO;

/// <summary>
/// What the epoll backend leaves in the process's descriptor table: nothing once disposed, however often disposed or
/// woken after, and nothing a child process inherits. Read from the fd table, so these run alone
/// (<see cref="FaultInjectionGroup"/>).
/// </summary>
[Collection(nameof(FaultInjectionGroup))]
[SupportedOSPlatform("linux")]
public sealed class EpollBackendDescriptorTests
{
    /// <summary>
    /// Fails with the wake's reference to the eventfd never released (its <c>if</c> negated, or the release removed:
    /// the eventfd stays open for good), with a second disposal let through (the buffer freed twice: the heap check
    /// aborts the process), and with a wake after disposal releasing a reference it never took (it throws).
    /// </summary>
    [Fact]
    public void A_disposed_backend_closes_its_descriptors_and_tolerates_a_second_dispose_and_late_wakes()
    {
        Dictionary<int, string> baseline = ReactorDescriptors.Open();
        var backend = new EpollBackend();
        ReactorDescriptors.OpenedSince(baseline).Values.Should().BeEquivalentTo(["anon_inode:[eventpoll]", "anon_inode:[eventfd]"]);
        for (int i = 0; i < 3; i++)
        {
            backend.Wake();
        }

        var events = new ReadinessEvent[4];
        backend.Wait(events, 0).Should().Be(1, "three wakes before one wait are one wake event");
        events[0].Token.Should().Be(EpollBackend.WakeToken);

        backend.Dispose();
        backend.Dispose();
        FluentActions.Invoking(backend.Wake).Should().NotThrow("a wake may race the reactor's disposal");
        ReactorDescriptors.OpenedSince(baseline).Should().BeEmpty("the epoll instance and the eventfd are closed");
    }

    /// <summary>
    /// A process that starts children (a build tool, a shell-out) must not hand them the reactor's epoll instance,
    /// eventfd or sockets: a child that outlives its parent would keep a listening port bound. Every descriptor is
    /// opened close-on-exec. Fails with the eventfd's flags and'ed together (no <c>EFD_CLOEXEC</c>).
    /// </summary>
    [Fact]
    public async Task A_child_process_inherits_none_of_the_reactors_descriptors()
    {
        var scheduler = new WorkStealingTaskScheduler(2);
        await using var disposeScheduler = SchedulerTestHelpers.DisposeWithin(scheduler);
        using var reactor = new IoReactor(scheduler);
        using ReactorSocket listener = ReactorSocket.Listen(reactor, IoTestContext.Loopback);
        using ReactorSocket client = await ReactorSocket.ConnectAsync(reactor, listener.LocalEndPoint!).AsTask().WaitAsync(IoTestContext.Timeout);
        using ReactorSocket server = await listener.AcceptAsync().AsTask().WaitAsync(IoTestContext.Timeout);
        string[] ours = [.. ReactorDescriptors.Open().Values];
        ours.Should().Contain("anon_inode:[eventpoll]").And.Contain("anon_inode:[eventfd]").And.Contain(target => target.StartsWith("socket:", StringComparison.Ordinal));

        var start = new ProcessStartInfo("/bin/ls", "-l /proc/self/fd") { RedirectStandardOutput = true, UseShellExecute = false };
        using Process child = Process.Start(start)!;
        string listing = await child.StandardOutput.ReadToEndAsync().WaitAsync(IoTestContext.Timeout);
        await child.WaitForExitAsync().WaitAsync(IoTestContext.Timeout);

        child.ExitCode.Should().Be(0);
        listing.Should().NotContain("eventpoll").And.NotContain("eventfd").And.NotContain("socket:");
    }
}
