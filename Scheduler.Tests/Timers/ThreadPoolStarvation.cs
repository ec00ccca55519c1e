using System.Runtime.CompilerServices;

namespace Scheduler.Tests.Timers;

/// <summary>
/// Starves the ThreadPool for tests of what timers do when no thread is free to run their callbacks. Only for tests in
/// a serial collection (they block every ThreadPool thread of the process).
/// </summary>
internal static class ThreadPoolStarvation
{
    /// <summary>
    /// Occupies the ThreadPool's threads (and a few it may add) until disposed; returns once the threads that existed took
    /// theirs (or after 2 s: the count may include threads that run no work items), so that work queued meanwhile waits.
    /// </summary>
    public static IDisposable Begin()
    {
        var release = new Release();
        int existing = ThreadPool.ThreadCount - (Thread.CurrentThread.IsThreadPoolThread ? 1 : 0);
        for (int i = 0; i < existing + 4; i++)
        {
            ThreadPool.UnsafeQueueUserWorkItem(
                static state =>
                {
                    Interlocked.Increment(ref state.Started.Value);
                    state.Wait();
                },
                release,
                preferLocal: false);
        }

        SpinWait.SpinUntil(() => Volatile.Read(ref release.Started.Value) >= existing, TimeSpan.FromSeconds(2));
        return release;
    }

    /// <summary>Lets the blocking items go on Dispose (also when the test fails: the rest of the run needs the pool).</summary>
    private sealed class Release : IDisposable
    {
        private readonly ManualResetEventSlim _event = new();

        public StrongBox<int> Started { get; } = new();

        public void Wait() => _event.Wait();

        public void Dispose() => _event.Set();
    }
}
