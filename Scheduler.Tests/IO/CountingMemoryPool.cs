using System.Buffers;

namespace Scheduler.Tests.IO;

/// <summary>
/// A memory pool for a connection's <see cref="System.IO.Pipelines.PipeOptions"/> that counts the blocks it hands out
/// and the ones given back (disposed), so a test can see a pipe return every block.
/// </summary>
internal sealed class CountingMemoryPool(int maxBufferSize) : MemoryPool<byte>
{
    private int _outstanding;
    private int _rented;

    /// <summary>Blocks handed out and not given back yet.</summary>
    public int Outstanding => Volatile.Read(ref _outstanding);

    /// <summary>Blocks handed out in all.</summary>
    public int Rented => Volatile.Read(ref _rented);

    public override int MaxBufferSize => maxBufferSize;

    public override IMemoryOwner<byte> Rent(int minBufferSize = -1)
    {
        Interlocked.Increment(ref _outstanding);
        Interlocked.Increment(ref _rented);
        return new Owner(this, new byte[Math.Max(minBufferSize < 0 ? maxBufferSize : minBufferSize, 1)]);
    }

    protected override void Dispose(bool disposing)
    {
    }

    private sealed class Owner(CountingMemoryPool pool, byte[] array) : IMemoryOwner<byte>
    {
        private int _disposed;

        public Memory<byte> Memory => array;

        public void Dispose()
        {
            if (Interlocked.Exchange(ref _disposed, 1) == 0)
            {
                Interlocked.Decrement(ref pool._outstanding);
            }
        }
    }
}
