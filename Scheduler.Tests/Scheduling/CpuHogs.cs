namespace Scheduler.Tests.Scheduling;

/// <summary>
/// Threads that keep every CPU busy until disposed, as another process would: a worker that spins while they run is
/// preempted (its yields hand the CPU to them for a whole time slice).
/// </summary>
internal sealed class CpuHogs : IDisposable
{
    private readonly CancellationTokenSource _stop = new();
    private readonly Thread[] _threads;

    public CpuHogs()
    {
        CancellationToken stop = _stop.Token;
        _threads = [.. Enumerable.Range(0, Environment.ProcessorCount).Select(_ => new Thread(() =>
        {
            while (!stop.IsCancellationRequested)
            {
                Thread.SpinWait(1000);
            }
        }) { IsBackground = true, Name = "CpuHog" })];
        foreach (Thread thread in _threads)
        {
            thread.Start();
        }
    }

    public void Dispose()
    {
        _stop.Cancel();
        foreach (Thread thread in _threads)
        {
            thread.Join();
        }

        _stop.Dispose();
    }
}
