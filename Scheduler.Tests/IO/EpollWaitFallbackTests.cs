using System.Diagnostics;
using System.Net.Sockets;
using Scheduler.IO;
using Scheduler.Native;
using static Scheduler.Native.LinuxConstants;

namespace Scheduler.Tests.IO;

/// <summary>
/// The backend's timed wait uses <c>epoll_pwait2</c> (a nanosecond timeout) where it exists, and falls back to
/// <c>epoll_wait</c> (milliseconds, rounded up) for good once the call is refused: ENOSYS on kernels before 5.11, EPERM
/// from a seccomp filter that does not know it. The machines that run these tests have the call, so the refusal is
/// injected through <see cref="FaultInjection.HookForTests"/> (on this thread: the backend waits on its caller's).
/// </summary>
[Collection(nameof(FaultInjectionGroup))]
public sealed class EpollWaitFallbackTests
{
    [Theory]
    [InlineData(ENOSYS)]
    [InlineData(EPERM)]
    public void A_refused_nanosecond_wait_falls_back_to_milliseconds_for_good_and_never_ends_early(int errno)
    {
        using var backend = new EpollBackend();
        int asked = RefusePWait2(errno, times: int.MaxValue);
        try
        {
            var events = new ReadinessEvent[4];
            var longest = TimeSpan.Zero;
            for (int i = 0; i < 5; i++)
            {
                // 1.2 ms: a millisecond wait that rounded down would end after 1 ms, before the deadline.
                var wait = Stopwatch.StartNew();
                backend.Wait(events, timeoutNanoseconds: 1_200_000).Should().Be(0, "nothing is registered");
                wait.Elapsed.Should().BeGreaterThanOrEqualTo(TimeSpan.FromTicks(12_000), "a wait never ends before the timeout it was given");
            }

            Volatile.Read(ref s_pwait2Asked).Should().Be(asked + 1, "the first refusal settles it: later waits go straight to epoll_wait");

            // The fallback still reports readiness (and wake-ups) as before.
            backend.Wake();
            backend.Wait(events, timeoutNanoseconds: 5_000_000_000).Should().Be(1);
            events[0].Token.Should().Be(EpollBackend.WakeToken);
        }
        finally
        {
            FaultInjection.HookForTests = null;
        }
    }

    [Fact]
    public void Any_other_error_of_the_nanosecond_wait_is_reported_and_does_not_switch_the_wait()
    {
        using var backend = new EpollBackend();
        int asked = RefusePWait2(EBADF, times: 1);
        try
        {
            var events = new ReadinessEvent[4];
            FluentActions.Invoking(() => backend.Wait(events, timeoutNanoseconds: 1_000_000))
                .Should().Throw<SocketException>().WithMessage("epoll_wait failed*");

            backend.Wait(events, timeoutNanoseconds: 1_000_000).Should().Be(0);
            Volatile.Read(ref s_pwait2Asked).Should().Be(asked + 2, "the nanosecond wait is still used after an error that is not a refusal of the call");
        }
        finally
        {
            FaultInjection.HookForTests = null;
        }
    }

    private static int s_pwait2Asked;

    /// <summary>Counts this thread's epoll_pwait2 calls, and fails the first <paramref name="times"/> with <paramref name="errno"/>. Returns the count before.</summary>
    private static int RefusePWait2(int errno, int times)
    {
        int thread = Environment.CurrentManagedThreadId;
        int before = Volatile.Read(ref s_pwait2Asked);
        int left = times;
        FaultInjection.HookForTests = name =>
        {
            if (name != "epoll_pwait2" || Environment.CurrentManagedThreadId != thread)
            {
                return 0;
            }

            Interlocked.Increment(ref s_pwait2Asked);
            return Interlocked.Decrement(ref left) >= 0 ? errno : 0;
        };

        return before;
    }
}
