namespace Scheduler.Timers;

/// <summary>
/// A reusable batch of entries taken off the wheel, each with the token captured under the lock. The driver
/// keeps one for its lifetime, so firing allocates nothing once the array has grown to the largest batch.
/// </summary>
/// <remarks>
/// Entries are copied out (rather than chained through their links) because an entry may be completed by a
/// racing cancellation, returned to its pool and re-inserted while the driver is still firing the batch:
/// its links then belong to the wheel again, while its stale token makes the late fire a no-op.
/// </remarks>
internal sealed class ExpiredTimers
{
    private TimerEntry?[] _entries = new TimerEntry?[64];
    private long[] _tokens = new long[64];

    public int Count { get; private set; }

    public TimerEntry this[int index] => _entries[index]!;

    public void Add(TimerEntry entry)
    {
        if (Count == _entries.Length)
        {
            Array.Resize(ref _entries, Count * 2);
            Array.Resize(ref _tokens, Count * 2);
        }

        _entries[Count++] = entry;
    }

    public long GetToken(int index) => _tokens[index];

    public void SetToken(int index, long token) => _tokens[index] = token;

    /// <summary>Replaces the entry at <paramref name="index"/> with the last one (order within a batch does not matter).</summary>
    public void RemoveAt(int index)
    {
        Count--;
        _entries[index] = _entries[Count];
        _tokens[index] = _tokens[Count];
        _entries[Count] = null;
    }

    public void Clear()
    {
        Array.Clear(_entries, 0, Count);
        Count = 0;
    }
}
