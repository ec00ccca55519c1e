namespace Scheduler;

/// <summary>
/// Finds the <see cref="SendOrPostCallback"/>s that <c>await Task.Yield()</c> posts to a synchronization context, so that
/// <see cref="WorkStealingSynchronizationContext"/> can serve yields FIFO and every other post (an await resuming) LIFO.
/// </summary>
/// <remarks>
/// The runtime posts a yield with one of two cached static delegates: one for async methods (the state machine box is
/// the state) and one for the <see cref="Action"/>-based path (used directly, and by async methods while TPL event
/// tracing is on). Both are found by yielding once under a probe context that records the callback and never runs it.
/// </remarks>
internal static class YieldCallbacks
{
    public static SendOrPostCallback?[] Discover()
    {
        var probe = new ProbeContext();
        SynchronizationContext? previous = SynchronizationContext.Current;
        try
        {
            SynchronizationContext.SetSynchronizationContext(probe);
            _ = YieldOnceAsync(); // suspends at the yield for good: the probe never runs the continuation
            Task.Yield().GetAwaiter().UnsafeOnCompleted(static () => { });
        }
        finally
        {
            SynchronizationContext.SetSynchronizationContext(previous);
        }

        return [probe.First, probe.Second];
    }

    private static async Task YieldOnceAsync() => await Task.Yield();

    private sealed class ProbeContext : SynchronizationContext
    {
        public SendOrPostCallback? First { get; private set; }

        public SendOrPostCallback? Second { get; private set; }

        public override void Post(SendOrPostCallback d, object? state)
        {
            if (First is null)
            {
                First = d;
            }
            else if (!ReferenceEquals(First, d))
            {
                Second ??= d;
            }
        }
    }
}
