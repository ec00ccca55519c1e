using Scheduler.Tests.Sources;

namespace Scheduler.Tests.Scheduling;

/// <summary>
/// The callbacks <see cref="YieldCallbacks"/> discovers are the two a <c>Task.Yield</c> posts to a synchronization
/// context, and not the one an awaited task's resumption posts: <see cref="WorkStealingSynchronizationContext"/> serves
/// the first FIFO and the rest LIFO. The mutation run over it (session 51) found no test that would notice a discovery
/// that missed one: a yield then still runs, only in the wrong order.
/// </summary>
public sealed class YieldCallbacksTests
{
    [Fact]
    public void Discovery_finds_the_async_methods_and_the_awaiters_yield_callbacks_and_no_other()
    {
        SendOrPostCallback?[] found = YieldCallbacks.Discover();

        found.Should().HaveCount(2).And.OnlyContain(callback => callback != null);
        found[0].Should().NotBeSameAs(found[1]);

        var recorder = new HeldPostsSynchronizationContext(); // runs nothing it is given until asked
        var resumption = new TaskCompletionSource();
        SynchronizationContext? previous = SynchronizationContext.Current;
        try
        {
            SynchronizationContext.SetSynchronizationContext(recorder);
            _ = YieldOnceAsync(); // posts its yield and stays suspended
            Task.Yield().GetAwaiter().UnsafeOnCompleted(static () => { });
            _ = AwaitAsync(resumption.Task);
        }
        finally
        {
            SynchronizationContext.SetSynchronizationContext(previous);
        }

        resumption.SetResult(); // completed off the recorder: the awaiting method's resumption is posted to it, within this call
        SendOrPostCallback[] posted = recorder.HeldCallbacks;
        posted.Should().HaveCount(3);
        found.Should().Contain(posted[0], "an async method's yield").And.Contain(posted[1], "an awaiter's yield");
        found.Should().NotContain(posted[2], "an awaited task's resumption is no yield");
    }

    private static async Task YieldOnceAsync() => await Task.Yield();

    private static async Task AwaitAsync(Task task) => await task;
}
