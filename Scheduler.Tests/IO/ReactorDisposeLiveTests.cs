using System.IO.Pipelines;
using System.Net.Sockets;
using Scheduler.IO;

namespace Scheduler.Tests.IO;

public sealed class ReactorDisposeLiveTests
{
    [Fact]
    public async Task Disposing_the_reactor_under_live_connections_completes_every_pending_operation()
    {
        await using var io = new IoTestContext();
        using ReactorSocket listener = io.Listen();
        (ReactorSocket c1, ReactorSocket s1) = await io.ConnectPairOnSchedulerAsync(listener);
        (ReactorSocket c2, ReactorSocket s2) = await io.ConnectPairOnSchedulerAsync(listener);
        (ReactorSocket c3, ReactorSocket s3) = await io.ConnectPairOnSchedulerAsync(listener);
        (ReactorSocket c4, ReactorSocket s4) = await io.ConnectPairOnSchedulerAsync(listener);
        var reading = ReactorConnection.Create(s1);
        var writing = ReactorConnection.Create(s2);

        // Every operation is pending before the reactor is disposed. A fixed 300 ms pause stood for that and was not
        // enough beside busy processes: an operation still being issued (or the writer still filling the socket) when
        // Dispose ran then completed normally, or was refused, instead of being failed by the disposal.
        var issued = new List<Task>();
        Task<FlushResult> flush = await io.WriteUntilPaused(writing);
        Task<ReadResult> read = Issue(() => reading.Input.ReadAsync());
        Task<int> receive = Issue(() => s3.ReceiveAsync(new byte[16]));
        Task<int> send = Issue(() => c4.SendAsync(new byte[64 << 20]));
        Task<ReactorSocket> accept = Issue(() => listener.AcceptAsync());
        Task<bool> delay = Issue(async () =>
        {
            await io.Reactor.Timers.DelayAsync(TimeSpan.FromMinutes(5));
            return true;
        });
        await Task.WhenAll(issued).WaitAsync(IoTestContext.Timeout);
        (string Name, Task Task)[] operations = [("read", read), ("flush", flush), ("receive", receive), ("send", send), ("accept", accept), ("delay", delay)];
        foreach ((string name, Task task) in operations)
        {
            task.IsCompleted.Should().BeFalse("the {0} is pending before the disposal", name);
        }

        io.Reactor.Dispose();

        foreach ((string name, Task task) in operations)
        {
            Func<Task> wait = () => task.WaitAsync(IoTestContext.Timeout);
            await wait.Should().ThrowAsync<ObjectDisposedException>("the disposal ends the pending {0}", name);
        }

        // Each disposal is timed from its call to its completion, on the thread that completes it: the test's resumption
        // after each await waits for a pool or xunit thread, which a loaded run hands out seconds late. What is timed
        // still waits for the connections' loops to end on the scheduler's workers, which load delays too (a thread
        // held off its core for 3.45 s was measured in CI): 10 s for both still tells a bounded disposal from a hang.
        TimeSpan disposing = await Timed.UntilCompleted(() => reading.DisposeAsync().AsTask(), TimeSpan.FromSeconds(30))
            + await Timed.UntilCompleted(() => writing.DisposeAsync().AsTask(), TimeSpan.FromSeconds(30));
        disposing.Should().BeLessThan(TimeSpan.FromSeconds(10));
        c1.Dispose();
        c2.Dispose();
        s3.Dispose();
        s4.Dispose();

        // Starts an operation on the scheduler and counts it as issued once its call returned (its task pending).
        Task<T> Issue<T>(Func<ValueTask<T>> start)
        {
            var called = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            issued.Add(called.Task);
            return io.Run(async () =>
            {
                ValueTask<T> operation = start();
                called.SetResult();
                return await operation;
            });
        }
    }
}
