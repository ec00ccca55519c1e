namespace Scheduler.Timers;

/// <summary>
/// A reusable batch of entries taken off the wheel — timer objects and delay slots — each with the token captured
/// under the lock. The driver keeps one for its lifetime, so firing allocates nothing once the arrays have grown to
/// the largest batch.
/// </summary>
/// <remarks>
/// Entries are copied out (rather than chained through their links) because an entry may be completed by a
/// racing cancellation, returned to its pool and re-inserted while the driver is still firing the batch:
/// its links then belong to the wheel again, while its stale token makes the late fire a no-op. (A delay slot
/// cannot be reused while a batch holds it: the batch owns it until it has fired.)
/// </remarks>
internal sealed class ExpiredTimers
{
    private TimerEntry?[] _entries = new TimerEntry?[64];
    private long[] _tokens = new long[64];
    private int[] _delays = new int[64];
    private int[] _generations = new int[64];

    /// <summary>The timer entries in the batch.</summary>
    public int Count { get; private set; }

    /// <summary>The delay slots in the batch.</summary>
    public int DelayCount { get; private set; }

    /// <summary>True when the batch holds nothing.</summary>
    public bool IsEmpty => Count == 0 && DelayCount == 0;

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

    /// <summary>Appends a delay slot (its generation is set later, with <see cref="SetDelayGeneration"/>).</summary>
    public void AddDelay(int handle)
    {
        if (DelayCount == _delays.Length)
        {
            Array.Resize(ref _delays, DelayCount * 2);
            Array.Resize(ref _generations, DelayCount * 2);
        }

        _delays[DelayCount++] = handle;
    }

    public int GetDelay(int index) => _delays[index];

    public int GetDelayGeneration(int index) => _generations[index];

    public void SetDelayGeneration(int index, int generation) => _generations[index] = generation;

    /// <summary>Replaces the delay at <paramref name="index"/> with the last one.</summary>
    public void RemoveDelayAt(int index)
    {
        DelayCount--;
        _delays[index] = _delays[DelayCount];
        _generations[index] = _generations[DelayCount];
    }

    public void Clear()
    {
        Array.Clear(_entries, 0, Count);
        Count = 0;
        DelayCount = 0;
    }
}
