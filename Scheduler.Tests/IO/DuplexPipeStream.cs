using System.IO.Pipelines;
using Scheduler.IO;

namespace Scheduler.Tests.IO;

/// <summary>
/// A connection's two pipes as one stream (reads from Input, writes to Output), as SslStream needs (docs/io.md, "TLS and
/// other streams"). <see cref="Written"/> counts the bytes handed to Output, for tests that stop a writer at backpressure.
/// </summary>
internal sealed class DuplexPipeStream(ReactorConnection connection) : Stream
{
    private readonly Stream _input = connection.Input.AsStream(leaveOpen: true);
    private readonly Stream _output = connection.Output.AsStream(leaveOpen: true);

    public long Written { get; private set; }

    public override bool CanRead => true;

    public override bool CanWrite => true;

    public override bool CanSeek => false;

    public override long Length => throw new NotSupportedException();

    public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }

    public override ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default) =>
        _input.ReadAsync(buffer, cancellationToken);

    public override Task<int> ReadAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) =>
        _input.ReadAsync(buffer, offset, count, cancellationToken);

    public override ValueTask WriteAsync(ReadOnlyMemory<byte> buffer, CancellationToken cancellationToken = default)
    {
        Written += buffer.Length;
        return _output.WriteAsync(buffer, cancellationToken);
    }

    public override Task WriteAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken)
    {
        Written += count;
        return _output.WriteAsync(buffer, offset, count, cancellationToken);
    }

    public override Task FlushAsync(CancellationToken cancellationToken) => _output.FlushAsync(cancellationToken);

    public override int Read(byte[] buffer, int offset, int count) => throw new NotSupportedException("asynchronous use only");

    public override void Write(byte[] buffer, int offset, int count) => throw new NotSupportedException("asynchronous use only");

    public override void Flush() => throw new NotSupportedException("asynchronous use only");

    public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();

    public override void SetLength(long value) => throw new NotSupportedException();

    public override async ValueTask DisposeAsync()
    {
        await connection.Output.CompleteAsync();
        await connection.Input.CompleteAsync();
        await base.DisposeAsync();
    }
}
