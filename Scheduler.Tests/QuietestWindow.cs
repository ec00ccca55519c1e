using System.Diagnostics;

namespace Scheduler.Tests;

/// <summary>
/// Process-wide bytes over windows of a measured loop, each closed after <c>cycles</c> cycles or 40 ms (but never
/// under 16 cycles), whichever comes first; keeps the quietest window's bytes per cycle. The noise (the test host's
/// polls, ThreadPool thread injection, tiering) comes per unit of time and the cost under test per cycle: beside
/// three busy loops a window of 10,000 cycles on the ThreadPool took about a minute and read 51,240 B even with the
/// probe held (session 35), while a quiet machine runs it in tens of milliseconds. Short windows leave some of them
/// clean of the noise however slow the cycles get; an allocation in every cycle shows in every window, and on a
/// quiet machine a window still spans thousands of cycles, so an allocation once in that many shows too.
/// </summary>
internal sealed class QuietestWindow(int cycles)
{
    private static readonly TimeSpan Span = TimeSpan.FromMilliseconds(40);

    // Never fewer cycles than this in a window: a cycle's allocation can land just past the window's end (on the
    // completing thread, after the awaiter resumed), and windows of one or two cycles could then read clean with a
    // per-cycle allocation. Beside three busy loops 16 cycles of the ThreadPool's are ~100 ms, still often clean.
    private const int MinimumCycles = 16;
    private long _bytesAtStart;
    private long _startedAt;
    private int _cycles;
    private double _bestPerCycle = double.MaxValue;
    private long _bestBytes;
    private int _bestCycles;
    private int _count;
    private int _clean;

    public void Start()
    {
        _cycles = 0;
        _startedAt = Stopwatch.GetTimestamp();
        _bytesAtStart = GC.GetTotalAllocatedBytes(precise: true);
    }

    /// <summary>Counts a cycle just ended; closes the window and opens the next when it is full or old enough.</summary>
    public void Cycled()
    {
        if (++_cycles >= cycles || (_cycles >= MinimumCycles && Stopwatch.GetElapsedTime(_startedAt) >= Span))
        {
            Close();
            Start();
        }
    }

    /// <summary>Closes the open window; a tail shorter than the minimum after other windows is dropped, not read.</summary>
    public void Close()
    {
        long bytes = GC.GetTotalAllocatedBytes(precise: true) - _bytesAtStart;
        if (_cycles == 0 || (_cycles < MinimumCycles && _count > 0))
        {
            _cycles = 0;
            return;
        }

        _count++;
        _clean += bytes == 0 ? 1 : 0;
        double perCycle = bytes / (double)_cycles;
        if (perCycle < _bestPerCycle)
        {
            (_bestPerCycle, _bestBytes, _bestCycles) = (perCycle, bytes, _cycles);
        }

        _cycles = 0;
    }

    /// <summary>The quietest closed window's bytes per cycle (<see cref="double.MaxValue"/> until one has closed).</summary>
    public double BestBytesPerCycle => _bestPerCycle;

    /// <summary>0 when the quietest window stayed under <paramref name="budget"/> bytes per cycle, else its bytes per cycle rounded up.</summary>
    public long BytesPerCycleAbove(double budget) => _bestPerCycle < budget ? 0 : (long)Math.Ceiling(_bestPerCycle);

    public override string ToString() =>
        $"quietest of {_count} windows {_bestBytes} B over {_bestCycles} cycles; {_clean} windows allocated nothing process-wide";
}
