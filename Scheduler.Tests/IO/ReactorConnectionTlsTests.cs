using System.IO.Pipelines;
using System.Net;
using System.Net.Security;
using System.Net.Sockets;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using Scheduler.IO;

namespace Scheduler.Tests.IO;

/// <summary>
/// TLS over a <see cref="ReactorConnection"/>: its pipes wrapped in one <see cref="Stream"/> under an <see cref="SslStream"/>
/// (docs/io.md, "TLS and other streams"), against a client on System.Net.Sockets.
/// </summary>
public sealed class ReactorConnectionTlsTests
{
    [Fact]
    public async Task SslStream_over_the_pipes_handshakes_and_echoes_a_megabyte_intact()
    {
        using X509Certificate2 certificate = TestCertificates.CreateSelfSignedServer();
        await using var io = new IoTestContext();
        using ReactorSocket listener = io.Listen();
        using var plain = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        Task<ReactorSocket> accept = io.Run(async () => await listener.AcceptAsync());
        await plain.ConnectAsync(listener.LocalEndPoint!);
        var connection = ReactorConnection.Create(await accept);
        await using var disposeConnection = IoTestContext.DisposeWithin(connection);

        // The server side runs on the scheduler: every await in SslStream resumes on its workers.
        bool serverOnScheduler = true;
        Task server = io.Run(async () =>
        {
            await using var tls = new SslStream(new DuplexPipeStream(connection), leaveInnerStreamOpen: false);
            await tls.AuthenticateAsServerAsync(new SslServerAuthenticationOptions { ServerCertificate = certificate });
            serverOnScheduler &= io.Scheduler.IsWorkerThread;
            var buffer = new byte[16 << 10];
            int read;
            while ((read = await tls.ReadAsync(buffer)) > 0)
            {
                serverOnScheduler &= io.Scheduler.IsWorkerThread;
                await tls.WriteAsync(buffer.AsMemory(0, read));
            }

            await tls.ShutdownAsync(); // close_notify, then our FIN as the stream is disposed
        });

        await using var client = new SslStream(new NetworkStream(plain, ownsSocket: false), leaveInnerStreamOpen: false,
            (_, presented, _, _) => presented is not null && presented.GetCertHashString() == certificate.GetCertHashString());
        await client.AuthenticateAsClientAsync("localhost").WaitAsync(IoTestContext.Timeout);
        byte[] message = IoTestContext.Pattern(1 << 20, 31);
        Task sending = Task.Run(async () =>
        {
            await client.WriteAsync(message);
            plain.Shutdown(SocketShutdown.Send); // the server's read then ends (SslStream treats EOF as the end of data)
        });

        var received = new byte[message.Length];
        int total = 0;
        while (total < received.Length)
        {
            int n = await client.ReadAsync(received.AsMemory(total)).AsTask().WaitAsync(IoTestContext.Timeout);
            n.Should().BePositive("the echo must deliver the whole megabyte before it ends");
            total += n;
        }

        await sending.WaitAsync(IoTestContext.Timeout);
        await server.WaitAsync(IoTestContext.Timeout);
        received.AsSpan().SequenceEqual(message).Should().BeTrue();
        serverOnScheduler.Should().BeTrue();
        (await client.ReadAsync(new byte[1]).AsTask().WaitAsync(IoTestContext.Timeout)).Should().Be(0, "the server closed after close_notify");
    }
}
