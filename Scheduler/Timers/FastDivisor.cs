namespace Scheduler.Timers;

/// <summary>
/// Exact unsigned division by a divisor fixed at construction, with one multiply-high instead of a hardware divide
/// (a 64-bit <c>idiv</c> costs tens of cycles, and every timer arm converts its deadline to a tick).
/// </summary>
/// <remarks>
/// With <c>m = ⌊(2^64 − 1) / d⌋</c> and <c>x &lt; 2^63</c>, <c>⌊x·m / 2^64⌋</c> is the true quotient or one less;
/// a single compare of the remainder fixes it.
/// </remarks>
internal readonly struct FastDivisor
{
    private readonly ulong _divisor;
    private readonly ulong _multiplier;

    public FastDivisor(long divisor)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(divisor, 1);
        _divisor = (ulong)divisor;
        _multiplier = ulong.MaxValue / (ulong)divisor;
    }

    /// <summary>⌊<paramref name="dividend"/> / divisor⌋ and the remainder, for a non-negative dividend.</summary>
    public long DivRem(long dividend, out long remainder)
    {
        ulong x = (ulong)dividend;
        ulong quotient = Math.BigMul(x, _multiplier, out _);
        ulong rest = x - (quotient * _divisor);
        if (rest >= _divisor)
        {
            quotient++;
            rest -= _divisor;
        }

        remainder = (long)rest;
        return (long)quotient;
    }
}
