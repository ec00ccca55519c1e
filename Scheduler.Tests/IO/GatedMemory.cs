using System.Buffers;

namespace Scheduler.Tests.IO;

/// <summary>
/// Memory whose <see cref="GetSpan"/>, once armed, signals <see cref="Entered"/> and blocks until
/// <see cref="Release"/>: the attempt that reads its span (before its system call) is held at that point.
/// </summary>
internal sealed class GatedMemory(int length) : MemoryManager<byte>
{
    private readonly byte[] _array = new byte[length];
    private readonly ManualResetEventSlim _release = new();
    private int _callsUntilGate;

    public ManualResetEventSlim Entered { get; } = new();

    /// <summary>The <paramref name="calls"/>-th read of the span from now on is held at the gate.</summary>
    public void Arm(int calls = 1) => Volatile.Write(ref _callsUntilGate, calls);

    public void Release() => _release.Set();

    public override Span<byte> GetSpan()
    {
        if (Volatile.Read(ref _callsUntilGate) > 0 && Interlocked.Decrement(ref _callsUntilGate) == 0)
        {
            Entered.Set();
            _release.Wait(TimeSpan.FromSeconds(10)); // bounded: a test that never releases fails on its own bounds
        }

        return _array;
    }

    public override MemoryHandle Pin(int elementIndex = 0) => throw new NotSupportedException();

    public override void Unpin()
    {
    }

    protected override void Dispose(bool disposing)
    {
        _release.Set();
        _release.Dispose();
        Entered.Dispose();
    }
}
