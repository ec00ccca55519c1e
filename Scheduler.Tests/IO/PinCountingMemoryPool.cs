using System.Buffers;
using System.Runtime.CompilerServices;

namespace Scheduler.Tests.IO;

/// <summary>
/// A memory pool whose blocks count the pins taken on them and the pins released, so a test can see that every pin a
/// system call took (a gathered send pins each segment) is given back.
/// </summary>
internal sealed class PinCountingMemoryPool(int blockSize) : MemoryPool<byte>
{
    private long _pins;
    private long _unpins;

    /// <summary>Pins taken on the pool's blocks.</summary>
    public long Pins => Interlocked.Read(ref _pins);

    /// <summary>Pins released.</summary>
    public long Unpins => Interlocked.Read(ref _unpins);

    public override int MaxBufferSize => blockSize;

    public override IMemoryOwner<byte> Rent(int minBufferSize = -1) => new Block(this, Math.Max(minBufferSize < 0 ? blockSize : minBufferSize, 1));

    protected override void Dispose(bool disposing)
    {
    }

    private sealed unsafe class Block(PinCountingMemoryPool pool, int length) : MemoryManager<byte>
    {
        private readonly byte[] _array = GC.AllocateArray<byte>(length, pinned: true); // on the pinned heap: its address holds

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
        }
    }
}
