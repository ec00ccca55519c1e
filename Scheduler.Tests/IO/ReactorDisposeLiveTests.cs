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
        Task<ReadResult> read = io.Run(async () => await reading.Input.ReadAsync());
        Task<FlushResult> flush = io.Run(async () =>
        {
            while (true)
            {
                Task<FlushResult> f = writing.Output.WriteAsync(new byte[64 << 10]).AsTask();
                if (await Task.WhenAny(f, Task.Delay(300)) != f)
                {
                    return await f;
                }
            }
        });
        Task<int> receive = io.Run(async () => await s3.ReceiveAsync(new byte[16]));
        Task<int> send = io.Run(async () => await c4.SendAsync(new byte[64 << 20]));
        Task<ReactorSocket> accept = io.Run(async () => await listener.AcceptAsync());
        Task delay = io.Run(async () => await io.Reactor.Timers.DelayAsync(TimeSpan.FromMinutes(5)));
        await Task.Delay(300);
        io.Reactor.Dispose();

        Task[] all = [read, flush, receive, send, accept, delay];
        foreach (Task t in all)
        {
            Func<Task> wait = () => t.WaitAsync(TimeSpan.FromSeconds(5));
            await wait.Should().ThrowAsync<ObjectDisposedException>();
        }

        var started = System.Diagnostics.Stopwatch.StartNew();
        await reading.DisposeAsync().AsTask().WaitAsync(TimeSpan.FromSeconds(5));
        await writing.DisposeAsync().AsTask().WaitAsync(TimeSpan.FromSeconds(5));
        started.Elapsed.Should().BeLessThan(TimeSpan.FromSeconds(2.5));
        c1.Dispose();
        c2.Dispose();
        s3.Dispose();
        s4.Dispose();
    }
}
