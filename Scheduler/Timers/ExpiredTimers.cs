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
    // Timer entries with their fire tokens, delay slot handles with their generations.
    private Pairs<TimerEntry?, long> _entries = new(64);
    private Pairs<int, int> _delays = new(64);

    /// <summary>The timer entries in the batch.</summary>
    public int Count => _entries.Count;

    /// <summary>The delay slots in the batch.</summary>
    public int DelayCount => _delays.Count;

    /// <summary>True when the batch holds nothing.</summary>
    public bool IsEmpty => Count == 0 && DelayCount == 0;

    public TimerEntry this[int index] => _entries.Items[index]!;

    /// <summary>Appends a timer entry (its token is set later, with <see cref="SetToken"/>).</summary>
    public void Add(TimerEntry entry) => _entries.Add(entry);

    public long GetToken(int index) => _entries.Tokens[index];

    public void SetToken(int index, long token) => _entries.Tokens[index] = token;

    /// <summary>Replaces the entry at <paramref name="index"/> with the last one (order within a batch does not matter).</summary>
    public void RemoveAt(int index) => _entries.RemoveAt(index);

    /// <summary>Appends a delay slot (its generation is set later, with <see cref="SetDelayGeneration"/>).</summary>
    public void AddDelay(int handle) => _delays.Add(handle);

    public int GetDelay(int index) => _delays.Items[index];

    public int GetDelayGeneration(int index) => _delays.Tokens[index];

    public void SetDelayGeneration(int index, int generation) => _delays.Tokens[index] = generation;

    /// <summary>Replaces the delay at <paramref name="index"/> with the last one.</summary>
    public void RemoveDelayAt(int index) => _delays.RemoveAt(index);

    public void Clear()
    {
        _entries.Clear();
        _delays.Clear();
    }

    /// <summary>Items with a token each, in two parallel arrays that grow together. A mutable struct: used through its field only.</summary>
    private struct Pairs<TItem, TToken>(int capacity)
    {
        public TItem[] Items = new TItem[capacity];
        public TToken[] Tokens = new TToken[capacity];
        public int Count;

        public void Add(TItem item)
        {
            if (Count == Items.Length)
            {
                Array.Resize(ref Items, Count * 2);
                Array.Resize(ref Tokens, Count * 2);
            }

            Items[Count++] = item;
        }

        public void RemoveAt(int index)
        {
            Count--;
            Items[index] = Items[Count];
            Tokens[index] = Tokens[Count];
            Items[Count] = default!; // lets go of an entry reference
        }

        public void Clear()
        {
            Array.Clear(Items, 0, Count);
            Count = 0;
        }
    }
}
