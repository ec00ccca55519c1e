using System.Collections.Concurrent;
using System.Diagnostics.CodeAnalysis;
using System.Runtime.CompilerServices;

namespace Scheduler.Sources;

/// <summary>
/// A bounded, thread-safe pool of reusable objects (typically <see cref="System.Threading.Tasks.Sources.IValueTaskSource"/>
/// implementations built on <see cref="WakerCore{TResult}"/>). <see cref="Rent"/> never fails: it creates a new object
/// when the pool is empty. <see cref="Return"/> keeps at most <see cref="Capacity"/> objects and drops the rest for the GC.
/// </summary>
/// <typeparam name="T">The pooled type.</typeparam>
/// <remarks>
/// <para>
/// The fastest path is a one-object cache per thread (no atomic operation: rent, await and return on one
/// thread is the common case). Behind it the path is lock-free and mostly uncontended: each processor has a few slots of its own (picked with
/// <see cref="Thread.GetCurrentProcessorId"/>), taken and filled with one compare-and-swap; a shared lock-free
/// overflow queue absorbs bursts; other processors' slots are the last resort before creating (on
/// <see cref="Rent"/>) or dropping (on <see cref="Return"/>). No path allocates in steady state.
/// </para>
/// <para>
/// <see cref="Capacity"/> bounds the shared storage; on top of it each thread that returned an object keeps at
/// most one per pool. The pool holds these per-thread objects itself: a pool the program drops is collected with them.
/// </para>
/// <para>
/// The pool does not reset objects: return them ready for their next use. Return an object at most once per
/// rental; returning one that someone still uses hands it to two owners. A bounded pool matters for
/// <see cref="WakerCore{TResult}"/>-based objects: their 16-bit version repeats after 65,536 reuses.
/// </para>
/// </remarks>
public sealed class ValueTaskSourcePool<T>
    where T : class
{
    // Slots of one processor are grouped, and groups are this many references apart, so processors never
    // write to the same cache line (16 references = 128 bytes, enough for adjacent-line prefetching too).
    private const int StripeStride = 16;
    private const int MaxSlotsPerStripe = 8;
    private const int MaxStripes = 64;

    private readonly Func<T> _factory;
    private object?[] _threadCache = []; // one object per thread, at the thread's PoolThreadCache.Offset; grown, never copied
    private readonly T?[] _slots;
    private readonly int _stripeCount;
    private readonly int _slotsPerStripe;
    private readonly int _overflowCapacity;
    private readonly ConcurrentQueue<T> _overflow = new();
    private int _overflowCount;

    /// <summary>Creates a pool that creates objects with <paramref name="factory"/> and retains at most <paramref name="capacity"/> of them.</summary>
    /// <param name="factory">Creates a new object when the pool is empty. It may be called concurrently.</param>
    /// <param name="capacity">The most objects the pool retains (0 retains none); a sensible value is a few times the expected number in flight.</param>
    /// <exception cref="ArgumentNullException"><paramref name="factory"/> is null.</exception>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="capacity"/> is negative.</exception>
    public ValueTaskSourcePool(Func<T> factory, int capacity)
    {
        ArgumentNullException.ThrowIfNull(factory);
        ArgumentOutOfRangeException.ThrowIfNegative(capacity);

        _factory = factory;
        Capacity = capacity;
        _stripeCount = Math.Min(Environment.ProcessorCount, MaxStripes);

        // Give the per-processor slots up to half the capacity, the shared overflow the rest.
        _slotsPerStripe = Math.Min(MaxSlotsPerStripe, capacity / 2 / _stripeCount);
        _slots = _slotsPerStripe == 0 ? [] : new T?[_stripeCount * StripeStride];
        _overflowCapacity = capacity - (_stripeCount * _slotsPerStripe);
    }

    /// <summary>The most objects the pool's shared storage retains (each thread may also cache one, see the remarks on the type).</summary>
    public int Capacity { get; }

    /// <summary>How many objects the shared storage holds now (a racy snapshot, for diagnostics; per-thread cached objects are not counted).</summary>
    public int Count
    {
        get
        {
            int count = Math.Max(0, Volatile.Read(ref _overflowCount));
            for (int i = 0; i < _slots.Length; i++)
            {
                if (Volatile.Read(ref _slots[i]) is not null)
                {
                    count++;
                }
            }

            return count;
        }
    }

    /// <summary>Takes an object from the pool, or creates one with the factory when the pool is empty.</summary>
    /// <returns>An object that the caller owns until it returns it.</returns>
    /// <exception cref="InvalidOperationException">The factory returned null.</exception>
    public T Rent()
    {
        // The thread's own object first: rent, await and return on one thread is the common case, and this
        // path has no atomic operation at all.
        object?[] cache = _threadCache;
        int offset = PoolThreadCache.Offset;
        if ((uint)offset < (uint)cache.Length && cache[offset] is { } cached)
        {
            cache[offset] = null;
            return Unsafe.As<T>(cached);
        }

        int stripe = CurrentStripe();
        if (TryTakeFromStripe(stripe, out T? item))
        {
            return item;
        }

        if (Volatile.Read(ref _overflowCount) > 0 && _overflow.TryDequeue(out item))
        {
            Interlocked.Decrement(ref _overflowCount);
            return item;
        }

        // Other processors' slots last: creating an object costs more than looking at a few cache lines.
        for (int i = 1; i < _stripeCount; i++)
        {
            if (TryTakeFromStripe((stripe + i) % _stripeCount, out item))
            {
                return item;
            }
        }

        return _factory() ?? throw new InvalidOperationException($"The factory of ValueTaskSourcePool<{typeof(T).Name}> returned null.");
    }

    /// <summary>Gives <paramref name="item"/> back for reuse; when the pool is full the object is dropped for the GC.</summary>
    /// <param name="item">An object rented from (or created for) this pool, ready for its next use, no longer used by the caller.</param>
    /// <returns>True when the pool kept the object; false when it was full.</returns>
    /// <exception cref="ArgumentNullException"><paramref name="item"/> is null.</exception>
    public bool Return(T item)
    {
        ArgumentNullException.ThrowIfNull(item);

        object?[] cache = _threadCache;
        int offset = PoolThreadCache.Offset;
        if ((uint)offset < (uint)cache.Length)
        {
            if (cache[offset] is null)
            {
                cache[offset] = item;
                return true;
            }
        }
        else if (Capacity > 0 && TryPutInNewThreadCache(item))
        {
            return true;
        }

        int stripe = CurrentStripe();
        if (TryPutInStripe(stripe, item))
        {
            return true;
        }

        // Count before enqueueing (and Rent decrements after dequeueing), so the queue never exceeds its share.
        if (Interlocked.Increment(ref _overflowCount) <= _overflowCapacity)
        {
            _overflow.Enqueue(item);
            return true;
        }

        Interlocked.Decrement(ref _overflowCount);
        for (int i = 1; i < _stripeCount; i++)
        {
            if (TryPutInStripe((stripe + i) % _stripeCount, item))
            {
                return true;
            }
        }

        return false;
    }

    /// <summary>
    /// Slow path of <see cref="Return"/>: this thread has no id yet, or an id beyond this pool's array. The array is
    /// replaced by a larger, empty one: copying it could resurrect an object that its thread took from the old array
    /// meanwhile (two owners). What other threads cached in the old array is dropped for the GC, a rare miss.
    /// </summary>
    private bool TryPutInNewThreadCache(T item)
    {
        int offset = PoolThreadCache.AssignOffset();
        if (offset < 0)
        {
            return false;
        }

        while (true)
        {
            object?[] cache = Volatile.Read(ref _threadCache);
            if (offset < cache.Length)
            {
                if (cache[offset] is not null)
                {
                    return false;
                }

                cache[offset] = item;
                return true;
            }

            var grown = new object?[PoolThreadCache.ArrayLengthFor(offset)];
            grown[offset] = item;
            if (Interlocked.CompareExchange(ref _threadCache, grown, cache) == cache)
            {
                return true;
            }
        }
    }

    private bool TryTakeFromStripe(int stripe, [NotNullWhen(true)] out T? item)
    {
        int start = stripe * StripeStride;
        for (int i = start; i < start + _slotsPerStripe; i++)
        {
            item = Volatile.Read(ref _slots[i]);
            if (item is not null && Interlocked.CompareExchange(ref _slots[i], null, item) == item)
            {
                return true;
            }
        }

        item = null;
        return false;
    }

    private bool TryPutInStripe(int stripe, T item)
    {
        int start = stripe * StripeStride;
        for (int i = start; i < start + _slotsPerStripe; i++)
        {
            if (Volatile.Read(ref _slots[i]) is null && Interlocked.CompareExchange(ref _slots[i], item, null) is null)
            {
                return true;
            }
        }

        return false;
    }

    /// <summary>The length of the per-thread array now (for tests of the threads whose offset lies at its end).</summary>
    internal int ThreadCacheLengthForTests => Volatile.Read(ref _threadCache).Length;

    /// <summary>
    /// Replaces the per-thread array with an empty one of <paramref name="length"/> slots, so that a test thread's offset
    /// can lie exactly at its end: the arrays the pool makes cover every id once the process has used the highest one.
    /// </summary>
    internal void SetThreadCacheLengthForTests(int length) => Volatile.Write(ref _threadCache, new object?[length]);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private int CurrentStripe() => (int)((uint)Thread.GetCurrentProcessorId() % (uint)_stripeCount);
}
