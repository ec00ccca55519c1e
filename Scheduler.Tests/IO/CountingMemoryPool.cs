using System.Buffers;
using System.Runtime.CompilerServices;

namespace Scheduler.Tests.IO;

/// <summary>
/// A memory pool for a connection's <see cref="System.IO.Pipelines.PipeOptions"/> that counts the blocks it hands out
/// and the ones given back (disposed), so a test can see a pipe return every block, and the pins taken on its blocks
/// and released, so a test can see every pin a system call took (a gathered send pins each segment) given back.
/// </summary>
internal sealed class CountingMemoryPool(int maxBufferSize) : MemoryPool<byte>
{
    private int _outstanding;
    private int _rented;
    private long _pins;
    private long _unpins;

    /// <summary>Blocks handed out and not given back yet.</summary>
    public int Outstanding => Volatile.Read(ref _outstanding);

    /// <summary>Blocks handed out in all.</summary>
    public int Rented => Volatile.Read(ref _rented);

    /// <summary>Pins taken on the pool's blocks.</summary>
    public long Pins => Interlocked.Read(ref _pins);

    /// <summary>Pins released.</summary>
    public long Unpins => Interlocked.Read(ref _unpins);

    public override int MaxBufferSize => maxBufferSize;

    public override IMemoryOwner<byte> Rent(int minBufferSize = -1)
    {
        Interlocked.Increment(ref _outstanding);
        Interlocked.Increment(ref _rented);
        return new Block(this, Math.Max(minBufferSize < 0 ? maxBufferSize : minBufferSize, 1));
    }

    protected override void Dispose(bool disposing)
    {
    }

    private sealed unsafe class Block(CountingMemoryPool pool, int length) : MemoryManager<byte>
    {
        private readonly byte[] _array = GC.AllocateArray<byte>(length, pinned: true); // on the pinned heap: its address holds
        private int _disposed;

        public override Span<byte> GetSpan() => _array;

        public override MemoryHandle Pin(int elementIndex = 0)
        {
            Interlocked.Increment(ref pool._pins);
            return new MemoryHandle(Unsafe.AsPointer(ref _array[elementIndex]), default, this);
        }

        public override void Unpin() => Interlocked.Increment(ref pool._unpins);

        protected override bool TryGetArray(out ArraySegment<byte> segment)
        {
            segment = _array;
            return true;
        }

        protected override void Dispose(bool disposing)
        {
            if (Interlocked.Exchange(ref _disposed, 1) == 0)
            {
                Interlocked.Decrement(ref pool._outstanding);
            }
        }
    }
}
