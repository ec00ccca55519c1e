using System.Runtime.CompilerServices;

namespace Scheduler.Sources;

/// <summary>
/// The per-thread one-object caches of every <see cref="ValueTaskSourcePool{T}"/>: one array per thread, one slot
/// per pool. Non-generic on purpose: a thread-static of a generic type instantiated over a reference type goes
/// through a slow runtime lookup, a plain one is a few instructions.
/// </summary>
internal static class PoolThreadCache
{
    /// <summary>Pools beyond this many get no thread cache (their shared storage still works).</summary>
    public const int MaxPools = 256;

    [ThreadStatic]
    private static object?[]? t_slots;

    private static int s_nextIndex = -1;

    /// <summary>A slot index for a new pool, or -1 when all are taken.</summary>
    public static int AllocateIndex()
    {
        int index = Interlocked.Increment(ref s_nextIndex);
        return index < MaxPools ? index : -1;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static object? TryTake(int index)
    {
        object?[]? slots = t_slots;
        if (slots is null || (uint)index >= (uint)slots.Length)
        {
            return null;
        }

        object? item = slots[index];
        slots[index] = null;
        return item;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static bool TryPut(int index, object item)
    {
        object?[]? slots = t_slots;
        if (slots is null || (uint)index >= (uint)slots.Length)
        {
            return index >= 0 && TryPutSlow(index, item);
        }

        if (slots[index] is not null)
        {
            return false;
        }

        slots[index] = item;
        return true;
    }

    private static bool TryPutSlow(int index, object item)
    {
        // First use on this thread (or a pool created after it): size for the pools that exist now.
        object?[]? old = t_slots;
        var slots = new object?[Math.Min(MaxPools, Math.Max(index + 1, Volatile.Read(ref s_nextIndex) + 1))];
        old?.CopyTo(slots, 0);
        slots[index] = item;
        t_slots = slots;
        return true;
    }
}
