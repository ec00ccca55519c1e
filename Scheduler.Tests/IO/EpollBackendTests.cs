using System.Diagnostics;
using System.Runtime.InteropServices;
using System.Runtime.Versioning;
using Scheduler.IO;

namespace Scheduler.Tests.IO;

/// <summary>The epoll backend on its own: how its wait behaves when the OS interrupts it.</summary>
public sealed partial class EpollBackendTests
{
    [Fact]
    [SupportedOSPlatform("linux")]
    public void A_wait_interrupted_by_signals_never_outlasts_its_timeout()
    {
        // A process that handles a signal (SIGCHLD here, as one that starts child processes does) may get it on any
        // thread: also on the reactor's, blocked in epoll_wait, which then fails with EINTR. The reactor computes each
        // wait's timeout from the timer wheel's next deadline; a wait that started that timeout over after every
        // signal would make the timer late by all the time waited before.
        using var registration = PosixSignalRegistration.Create(PosixSignal.SIGCHLD, static _ => { });
        using var backend = new EpollBackend();
        TimeSpan timeout = TimeSpan.FromMilliseconds(400);
        int threadId = 0;
        var longest = TimeSpan.Zero;
        using var stop = new ManualResetEventSlim();
        var waiter = new Thread(() =>
        {
            Volatile.Write(ref threadId, GetThreadId());
            var events = new ReadinessEvent[16];
            while (!stop.IsSet)
            {
                var wait = Stopwatch.StartNew();
                int count = backend.Wait(events, (long)timeout.TotalNanoseconds);
                wait.Stop();
                count.Should().Be(0, "nothing is registered and nobody wakes the backend");
                if (wait.Elapsed > longest)
                {
                    longest = wait.Elapsed;
                }
            }
        })
        { IsBackground = true, Name = "epoll-signal-test" };
        waiter.Start();
        SpinWait.SpinUntil(() => Volatile.Read(ref threadId) != 0);

        // A signal every 50 ms for 1.2 s, then the waiter's last wait runs out in peace.
        var sending = Stopwatch.StartNew();
        while (sending.Elapsed < TimeSpan.FromMilliseconds(1200))
        {
            Signals.Send(threadId, Signals.SIGCHLD).Should().BeTrue();
            Thread.Sleep(50);
        }

        stop.Set();
        waiter.Join(TimeSpan.FromSeconds(10)).Should().BeTrue();
        longest.Should().BeLessThan(timeout + TimeSpan.FromMilliseconds(500), "a wait cut short by a signal must not start its timeout over");
    }

    [LibraryImport("libc", EntryPoint = "gettid")]
    private static partial int GetThreadId();
}
