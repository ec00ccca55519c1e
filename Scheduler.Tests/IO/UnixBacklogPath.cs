using System.Net.Sockets;
using Scheduler.IO;

namespace Scheduler.Tests.IO;

/// <summary>
/// A fresh Unix domain socket path for a test that fills its listener's backlog: it holds the clients that connected
/// while there was room, and disposing it disposes them and deletes the path's file.
/// </summary>
internal sealed class UnixBacklogPath : IDisposable
{
    public UnixBacklogPath(string prefix = "backlog")
    {
        Path = System.IO.Path.Combine(System.IO.Path.GetTempPath(), $"{prefix}-{Guid.NewGuid():N}.sock");
        EndPoint = new UnixDomainSocketEndPoint(Path);
    }

    public string Path { get; }

    public UnixDomainSocketEndPoint EndPoint { get; }

    /// <summary>The clients whose connects found room; disposed with this.</summary>
    public List<ReactorSocket> Clients { get; } = [];

    /// <summary>See <see cref="IoTestContext.ConnectUntilOneWaitsAsync"/>: connects until one waits, keeping the others in <see cref="Clients"/>.</summary>
    public Task<Task<ReactorSocket>?> ConnectUntilOneWaitsAsync(IoTestContext io) => io.ConnectUntilOneWaitsAsync(EndPoint, Clients);

    public void Dispose()
    {
        Clients.ForEach(c => c.Dispose());
        File.Delete(Path);
    }
}
