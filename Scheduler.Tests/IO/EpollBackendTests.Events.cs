using System.Diagnostics;
using System.Runtime.InteropServices;
using System.Runtime.Versioning;
using Scheduler.IO;
using Scheduler.Native;
using static Scheduler.Native.LinuxConstants;

namespace Scheduler.Tests.IO;

/// <summary>
/// The epoll backend on its own: which directions an event reports, how a wait's batch and timeout behave. Written
/// after session 49's mutation run of <c>EpollBackend.cs</c>, where the reactor's tests above it did not tell a
/// readiness that is reported from one that is made up, nor a timed wait from a poll.
/// </summary>
[SupportedOSPlatform("linux")]
public sealed partial class EpollBackendTests
{
    private const int O_NONBLOCK = 0x800;
    private const int O_CLOEXEC = 0x80000;

    /// <summary>
    /// A pipe has ends that are ready one way only: a read end holding data (readable), an empty pipe's write end
    /// (writable), and a read end whose writer closed (a hang-up alone, which must wake both directions so that each
    /// retried call reports what happened). Fails with a direction's flags or'ed in rather than tested, or the
    /// hang-up bits and'ed together (no direction woken for a bare hang-up).
    /// </summary>
    [Fact]
    public void An_event_reports_exactly_the_directions_that_are_ready()
    {
        using var backend = new EpollBackend();
        (int dataRead, int dataWrite) = Pipe();
        (int emptyRead, int emptyWrite) = Pipe();
        (int hungRead, int hungWrite) = Pipe();
        try
        {
            WriteByte(dataWrite);
            Libc.Close(hungWrite);
            hungWrite = -1;
            backend.Register(dataRead, 1);
            backend.Register(emptyWrite, 2);
            backend.Register(hungRead, 3);

            Dictionary<ulong, ReadinessEvent> events = WaitForTokens(backend, 3);

            events[1].Should().Be(new ReadinessEvent(1, Readable: true, Writable: false, Exceptional: false), "data waits to be read");
            events[2].Should().Be(new ReadinessEvent(2, Readable: false, Writable: true, Exceptional: false), "the pipe has room");
            events[3].Should().Be(new ReadinessEvent(3, Readable: true, Writable: true, Exceptional: true), "the writer hung up");
        }
        finally
        {
            foreach (int fd in new[] { dataRead, dataWrite, emptyRead, emptyWrite, hungRead, hungWrite })
            {
                if (fd >= 0)
                {
                    Libc.Close(fd);
                }
            }
        }
    }

    /// <summary>
    /// More descriptors ready than a wait can take: each wait fills what the caller's span (and the backend's own
    /// buffer of 256) holds, and later waits bring the rest, each exactly once. Fails with the caller's span length and
    /// the buffer's taken the wrong way round (events written past the span), and with the buffer allocated too small
    /// (the kernel then writes past it: the heap check aborts the process at the backend's disposal).
    /// </summary>
    [Theory]
    [InlineData(16)]
    [InlineData(512)]
    public void More_ready_descriptors_than_a_wait_takes_come_in_later_waits_each_once(int spanLength)
    {
        const int Count = 300;
        var fds = new List<int>();
        var seen = new HashSet<ulong>();
        try
        {
            using (var backend = new EpollBackend())
            {
                for (int i = 0; i < Count; i++)
                {
                    int fd = Libc.EventFd(0, EFD_CLOEXEC | EFD_NONBLOCK);
                    fd.Should().BeGreaterThanOrEqualTo(0);
                    fds.Add(fd);
                    backend.Register(fd, (ulong)i); // an eventfd is writable at once
                }

                var events = new ReadinessEvent[spanLength];
                var batches = new List<int>();
                var waiting = Stopwatch.StartNew();
                while (seen.Count < Count && waiting.Elapsed < IoTestContext.Timeout)
                {
                    int count = backend.Wait(events, 0);
                    batches.Add(count);
                    for (int i = 0; i < count; i++)
                    {
                        seen.Add(events[i].Token).Should().BeTrue("each edge is reported once");
                        events[i].Writable.Should().BeTrue();
                    }
                }

                batches.Should().OnlyContain(count => count <= Math.Min(spanLength, 256));
                batches[0].Should().Be(Math.Min(spanLength, 256), "every descriptor was ready before the first wait");
                backend.Wait(events, (long)TimeSpan.FromMilliseconds(10).TotalNanoseconds).Should().Be(0, "nothing became ready again");
            }

            seen.Should().HaveCount(Count);
        }
        finally
        {
            foreach (int fd in fds)
            {
                Libc.Close(fd);
            }
        }
    }

    /// <summary>
    /// A zero timeout polls; a positive one waits that long (with no event or wake) and no less; no timeout waits for a
    /// wake, however long. Fails with zero taken for "no timeout" (a poll that never returns), with the nanosecond
    /// timeout left zero (a wait that returns at once: the reactor thread spinning), and with "no timeout" passed to
    /// epoll_wait as 1 ms (an idle reactor waking a thousand times a second).
    /// </summary>
    [Fact]
    public void A_zero_timeout_polls_a_timed_wait_lasts_its_timeout_and_an_untimed_one_waits_for_a_wake()
    {
        using var backend = new EpollBackend();
        var events = new ReadinessEvent[4];

        Task<int> poll = Task.Run(() => backend.Wait(events, 0));
        bool polled = poll.Wait(IoTestContext.Timeout);
        if (!polled)
        {
            backend.Wake(); // a poll that blocks must not be inside epoll_wait when the backend frees its buffer
            poll.Wait(IoTestContext.Timeout);
        }

        polled.Should().BeTrue("a zero timeout returns at once");
        poll.Result.Should().Be(0);

        var timed = Stopwatch.StartNew();
        backend.Wait(events, (long)TimeSpan.FromMilliseconds(200).TotalNanoseconds).Should().Be(0);
        timed.Elapsed.Should().BeGreaterThanOrEqualTo(TimeSpan.FromMilliseconds(200), "a wait never ends before its timeout");

        var untimed = Stopwatch.StartNew();
        using var waker = new Timer(_ => backend.Wake(), null, TimeSpan.FromMilliseconds(300), Timeout.InfiniteTimeSpan);
        int count = backend.Wait(events, -1);
        untimed.Elapsed.Should().BeGreaterThanOrEqualTo(TimeSpan.FromMilliseconds(250), "nothing but the wake ends an untimed wait");
        count.Should().Be(1);
        events[0].Token.Should().Be(EpollBackend.WakeToken);
    }

    private static Dictionary<ulong, ReadinessEvent> WaitForTokens(EpollBackend backend, int count)
    {
        var found = new Dictionary<ulong, ReadinessEvent>();
        var events = new ReadinessEvent[16];
        var waiting = Stopwatch.StartNew();
        while (found.Count < count && waiting.Elapsed < IoTestContext.Timeout)
        {
            int n = backend.Wait(events, (long)TimeSpan.FromMilliseconds(100).TotalNanoseconds);
            for (int i = 0; i < n; i++)
            {
                found.Add(events[i].Token, events[i]);
            }
        }

        return found;
    }

    private static unsafe (int Read, int Write) Pipe()
    {
        int* fds = stackalloc int[2];
        Pipe2(fds, O_NONBLOCK | O_CLOEXEC).Should().Be(0, "errno {0}", Marshal.GetLastPInvokeError());
        return (fds[0], fds[1]);
    }

    private static unsafe void WriteByte(int fd)
    {
        byte one = 1;
        Libc.Write(fd, &one, 1).Should().Be(1);
    }

    [LibraryImport("libc", EntryPoint = "pipe2", SetLastError = true)]
    private static unsafe partial int Pipe2(int* fds, int flags);
}
