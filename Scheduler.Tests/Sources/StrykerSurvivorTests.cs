using System.Runtime.ExceptionServices;
using System.Threading.Tasks.Sources;
using Scheduler.Sources;

namespace Scheduler.Tests.Sources;

/// <summary>
/// Tests written from a Stryker.NET run over Scheduler/Sources: each one checks a behaviour that a surviving mutant
/// (named in its comment) showed no test checked, and passes on the unmutated code.
/// </summary>
public sealed class StrykerSurvivorTests
{
    private static readonly TimeSpan Guard = TimeSpan.FromSeconds(10);

    // Kills: WakerCore.cs GetResult, `ValidateToken(state, token)` removed — a stale token read the outcome of the core's
    // next operation once that one had completed, instead of throwing.
    [Fact]
    public void GetResult_with_the_token_of_a_previous_operation_throws_even_when_the_next_operation_has_completed()
    {
        var waker = new TestWaker<int>();
        short first = waker.Version;
        waker.Core.TrySetResult(first, 1).Should().BeTrue();
        waker.Core.TryReset(first).Should().BeTrue();
        short second = waker.Version;
        waker.Core.TrySetResult(second, 2).Should().BeTrue();

        Action stale = () => waker.Core.GetResult(first);
        stale.Should().Throw<InvalidOperationException>("the token names an operation that was already reset");
        waker.Core.GetResult(second).Should().Be(2);
    }

    // Kills: WakerCore.cs Consume, `ValidateToken(state, token)` removed — a stale token consumed (and reset) the core's
    // next operation once that one had completed, stealing its outcome from its real reader.
    [Fact]
    public void Consume_with_the_token_of_a_previous_operation_throws_and_leaves_the_next_operation_to_its_reader()
    {
        var waker = new TestWaker<int>();
        short first = waker.Version;
        waker.Core.TrySetResult(first, 1).Should().BeTrue();
        waker.Core.Consume(first, out _, out _);
        short second = waker.Version;
        waker.Core.TrySetResult(second, 2).Should().BeTrue();

        Action stale = () => waker.Core.Consume(first, out _, out _);
        stale.Should().Throw<InvalidOperationException>("the token names an operation that was already consumed");
        waker.Core.GetStatus(second).Should().Be(ValueTaskSourceStatus.Succeeded, "the stale read consumed nothing");
        waker.Core.Consume(second, out int result, out ExceptionDispatchInfo? error);
        result.Should().Be(2);
        error.Should().BeNull();
    }

    // Kills: WakerCore.cs HoldsContinuationForTests, `||` mutated to `&&` — the probe that other tests use to show a reset
    // core holds no continuation reported "nothing held" for a continuation registered without state or contexts, which
    // made those checks vacuous. The core holds a registered continuation until its reset and nothing after it.
    [Fact]
    public async Task A_registered_continuation_is_held_by_the_core_until_the_reset_after_it_ran()
    {
        var waker = new TestWaker<int>();
        short token = waker.Version;
        var ran = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);

        waker.Core.HoldsContinuationForTests.Should().BeFalse();
        await Task.Run(() => waker.Core.OnCompleted(_ => ran.SetResult(), null, token, ValueTaskSourceOnCompletedFlags.None)).WaitAsync(Guard);
        waker.Core.HoldsContinuationForTests.Should().BeTrue("a continuation without state or contexts is still a continuation");

        waker.Core.TrySetResult(token, 1).Should().BeTrue();
        await ran.Task.WaitAsync(Guard);
        waker.Core.Consume(token, out int result, out _);
        result.Should().Be(1);
        waker.Core.HoldsContinuationForTests.Should().BeFalse("the reset drops the continuation");
    }
}
