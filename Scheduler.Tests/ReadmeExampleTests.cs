using System.Net;
using System.Net.Sockets;
using Scheduler.IO;
using Scheduler.Sources;
using Scheduler.Timers;

namespace Scheduler.Tests;

/// <summary>The README's example, kept compiling and working (the echo loop bounded to one client).</summary>
public sealed class ReadmeExampleTests
{
    [Fact]
    public async Task The_readme_example_works_as_written()
    {
        using var scheduler = new WorkStealingTaskScheduler();

        int answer = await scheduler.Factory.StartNew(async () =>
        {
            await Task.Yield();
            return TaskScheduler.Current == scheduler ? 42 : -1;
        }).Unwrap();
        answer.Should().Be(42);
        int sum = 0;
        Parallel.For(0, 1000, new ParallelOptions { TaskScheduler = scheduler }, i => Interlocked.Add(ref sum, i));
        sum.Should().Be(499_500);

        PooledValueTaskSource<int> source = PooledValueTaskSource<int>.Rent();
        short version = source.Version;
        ThreadPool.QueueUserWorkItem(_ => source.TrySetResult(version, 7));
        int seven = await source.Task;
        seven.Should().Be(7);

        using var wheel = new TimerWheel();
        await wheel.DelayAsync(TimeSpan.FromMilliseconds(10));
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(30), wheel);

        using var reactor = new IoReactor(scheduler);
        TimeProvider ioTimers = reactor.Timers;
        ioTimers.Should().BeSameAs(reactor.Timers);
        using ReactorSocket listener = ReactorSocket.Listen(reactor, new IPEndPoint(IPAddress.Loopback, 0));
        Task server = scheduler.Factory.StartNew(async () =>
        {
            ReactorConnection connection = ReactorConnection.Create(await listener.AcceptAsync(timeout.Token));
            await connection.Input.CopyToAsync(connection.Output);
            await connection.DisposeAsync();
        }).Unwrap();

        using var client = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        await client.ConnectAsync(listener.LocalEndPoint!);
        await client.SendAsync("hello"u8.ToArray());
        client.Shutdown(SocketShutdown.Send);
        var received = new List<byte>();
        var buffer = new byte[64];
        int n;
        while ((n = await client.ReceiveAsync(buffer)) > 0)
        {
            received.AddRange(buffer.AsSpan(0, n).ToArray());
        }

        received.Should().Equal("hello"u8.ToArray());
        await server.WaitAsync(TimeSpan.FromSeconds(30));
    }
}
