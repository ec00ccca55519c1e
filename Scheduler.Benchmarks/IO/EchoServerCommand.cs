using System.Buffers;
using System.Globalization;
using System.Net;
using System.Net.Sockets;
using Scheduler.IO;

namespace Scheduler.Benchmarks.IO;

/// <summary>
/// <c>echo-server [--port 5000] [--workers N] [--unix PATH]</c>: an echo server on <see cref="ReactorConnection"/> pipes.
/// Prints active connections and echoed bytes per second once a second; Ctrl+C stops it cleanly.
/// </summary>
public static class EchoServerCommand
{
    private static long s_bytes;
    private static int s_connections;
    private static long s_accepted;

    /// <summary>Runs the server until Ctrl+C (or SIGTERM); returns the process exit code.</summary>
    public static async Task<int> RunAsync(string[] args)
    {
        ArgumentNullException.ThrowIfNull(args);
        if (CommandLine.ParseOrReport("echo-server", () => EchoServerOptions.Parse(args)) is not { } options)
        {
            return 2;
        }

        string? unixPath = options.UnixPath;

        if (!IoReactor.IsSupported)
        {
            await Console.Error.WriteLineAsync("echo-server needs Linux (epoll).");
            return 1;
        }

        using var stop = new CancellationTokenSource();
        ConsoleCancelEventHandler onCancel = (_, e) =>
        {
            e.Cancel = true; // stop cleanly instead of killing the process
            stop.Cancel();
        };
        Console.CancelKeyPress += onCancel;
        using var sigterm = System.Runtime.InteropServices.PosixSignalRegistration.Create(
            System.Runtime.InteropServices.PosixSignal.SIGTERM, ctx => { ctx.Cancel = true; stop.Cancel(); });

        await using var scheduler = new WorkStealingTaskScheduler(new WorkStealingTaskSchedulerOptions { WorkerCount = options.Workers, ThreadNamePrefix = "echo" });
        using var reactor = new IoReactor(scheduler);
        EndPoint endPoint = unixPath is null ? new IPEndPoint(IPAddress.IPv6Any, options.Port) : new UnixDomainSocketEndPoint(unixPath);
        if (unixPath is not null && File.Exists(unixPath))
        {
            File.Delete(unixPath);
        }

        ReactorSocket listener;
        try
        {
            listener = ReactorSocket.Listen(reactor, endPoint, backlog: 4096);
        }
        catch (SocketException e)
        {
            await Console.Error.WriteLineAsync($"cannot listen on {endPoint}: {e.Message}");
            return 1;
        }

        Console.WriteLine($"echo-server listening on {listener.LocalEndPoint} with {options.Workers} workers; Ctrl+C to stop");
        var connections = new HashSet<ReactorConnection>();
        Task acceptLoop = scheduler.Factory.StartNew(() => AcceptLoopAsync(listener, connections)).Unwrap();

        long lastBytes = 0;
        using var ticker = new PeriodicTimer(TimeSpan.FromSeconds(1));
        try
        {
            while (await ticker.WaitForNextTickAsync(stop.Token))
            {
                long bytes = Interlocked.Read(ref s_bytes);
                Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"{DateTime.Now:HH:mm:ss} connections {Volatile.Read(ref s_connections),6}  accepted {Interlocked.Read(ref s_accepted),8}  {(bytes - lastBytes) / 1_000_000.0,10:N2} MB/s echoed"));
                lastBytes = bytes;
            }
        }
        catch (OperationCanceledException)
        {
        }

        Console.WriteLine("stopping...");
        listener.Dispose();
        await acceptLoop;
        ReactorConnection[] open;
        lock (connections)
        {
            open = [.. connections];
        }

        await Task.WhenAll(open.Select(c => c.DisposeAsync().AsTask()));
        Console.CancelKeyPress -= onCancel;
        if (unixPath is not null)
        {
            File.Delete(unixPath);
        }

        Console.WriteLine($"stopped: {Interlocked.Read(ref s_accepted)} connections served, {Interlocked.Read(ref s_bytes):N0} bytes echoed");
        return 0;
    }

    private static async Task AcceptLoopAsync(ReactorSocket listener, HashSet<ReactorConnection> connections)
    {
        while (true)
        {
            ReactorSocket socket;
            try
            {
                socket = await listener.AcceptAsync();
            }
            catch (ObjectDisposedException)
            {
                return;
            }
            catch (SocketException e)
            {
                await Console.Error.WriteLineAsync($"accept failed: {e.Message}");
                await Task.Delay(100);
                continue;
            }

            var connection = ReactorConnection.Create(socket);
            lock (connections)
            {
                connections.Add(connection);
            }

            Interlocked.Increment(ref s_accepted);
            Interlocked.Increment(ref s_connections);
            _ = ServeAsync(connection, connections);
        }
    }

    private static async Task ServeAsync(ReactorConnection connection, HashSet<ReactorConnection> connections)
    {
        try
        {
            while (true)
            {
                System.IO.Pipelines.ReadResult result = await connection.Input.ReadAsync();
                long length = result.Buffer.Length;
                foreach (ReadOnlyMemory<byte> segment in result.Buffer)
                {
                    connection.Output.Write(segment.Span);
                }

                connection.Input.AdvanceTo(result.Buffer.End);
                System.IO.Pipelines.FlushResult flush = await connection.Output.FlushAsync();
                Interlocked.Add(ref s_bytes, length);
                if (result.IsCompleted || flush.IsCompleted)
                {
                    break;
                }
            }
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException or InvalidOperationException)
        {
            // One client's failure (reset, ...) ends only its own connection.
        }
        finally
        {
            await connection.Output.CompleteAsync();
            await connection.DisposeAsync();
            lock (connections)
            {
                connections.Remove(connection);
            }

            Interlocked.Decrement(ref s_connections);
        }
    }
}
