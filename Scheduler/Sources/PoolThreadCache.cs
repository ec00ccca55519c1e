using System.Numerics;
using System.Runtime.CompilerServices;

namespace Scheduler.Sources;

/// <summary>
/// The thread side of every <see cref="ValueTaskSourcePool{T}"/>'s one-object-per-thread cache: each thread that
/// returns an object to a pool gets a small id, and every pool keeps its cached objects in an array of its own at
/// <c>id × Stride</c>. The pool holds its cached objects, not the thread: a pool the program drops goes to the GC with
/// them. (One array per thread with a slot per pool, the earlier layout, kept a dropped pool's cached object for as long
/// as the thread lived — and with it the pool and its shared storage, since pooled objects usually refer to their pool;
/// its pool indices were never given back either, so only the first 256 pools of a process ever had thread caches.)
/// </summary>
/// <remarks>
/// A slot is read and written only by the thread that owns the id, with plain loads and stores. An id goes back to the
/// free list when its thread has ended (a finalizable object held in a thread-static); the next thread to take it may
/// find objects the old thread left in some pools' slots, which are free objects like any pooled one.
/// </remarks>
internal static class PoolThreadCache
{
    /// <summary>References between two threads' slots in a pool's array: 128 bytes, so threads never share a cache line (adjacent-line prefetching included).</summary>
    public const int Stride = 16;

    /// <summary>Threads beyond this many at once get no thread cache until an id is given back (the pools' shared storage still works).</summary>
    public const int MaxThreads = 1024;

    // The bitwise complement of this thread's offset (id × Stride), so that the default 0 reads as -1: out of every
    // pool's bounds, which sends the thread to the slow path that assigns it an id.
    [ThreadStatic]
    private static int t_notOffset;

    // Gives this thread's id back once the thread has ended (its thread-statics are then unreachable).
    [ThreadStatic]
    private static IdRelease? t_release;

    // When every id was taken as this thread asked for one: how many ids had been released by then, plus one (0: it
    // never found none left). It asks again only once another id has been released since, so an id-less thread's
    // returns cost a thread-static and a static read, not a scan under the lock, and it still gets a cache later.
    [ThreadStatic]
    private static int t_releasesWhenNoneLeft;

    // Ids in use (id 0 is never handed out: offset 0 is a pool array's leading padding).
    private static readonly bool[] s_inUse = new bool[MaxThreads + 1];
    private static readonly Lock s_lock = new();
    private static int s_highestId;
    private static int s_releases; // ids given back so far (written under the lock)

    /// <summary>This thread's slot offset in every pool's array, or -1 when it has none yet (or none was left).</summary>
    public static int Offset
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        get => ~t_notOffset;
    }

    /// <summary>For tests: how many ids have been given back (by ended threads) so far.</summary>
    internal static int ReleasedIdsForTests => Volatile.Read(ref s_releases);

    /// <summary>The array length a pool needs for every id handed out so far, given that it must cover <paramref name="offset"/>.</summary>
    public static int ArrayLengthFor(int offset)
    {
        int ids = Math.Max(offset / Stride, Volatile.Read(ref s_highestId)) + 1;
        return (int)Math.Min(BitOperations.RoundUpToPowerOf2((uint)ids), MaxThreads + 1u) * Stride;
    }

    /// <summary>Slow path: this thread's offset, assigning it an id on first use; -1 when every id is taken.</summary>
    public static int AssignOffset()
    {
        int offset = Offset;
        if (offset >= 0 || t_releasesWhenNoneLeft == Volatile.Read(ref s_releases) + 1)
        {
            return offset; // assigned, or none was left when this thread last asked and none has been released since
        }

        int id = 0;
        int releases;
        lock (s_lock)
        {
            releases = s_releases;
            for (int candidate = 1; candidate <= MaxThreads; candidate++)
            {
                if (!s_inUse[candidate])
                {
                    s_inUse[candidate] = true;
                    id = candidate;
                    if (candidate > s_highestId)
                    {
                        Volatile.Write(ref s_highestId, candidate);
                    }

                    break;
                }
            }
        }

        if (id == 0)
        {
            t_releasesWhenNoneLeft = releases + 1;
            return -1;
        }

        t_release = new IdRelease(id);
        t_notOffset = ~(id * Stride);
        return id * Stride;
    }

    private sealed class IdRelease(int id)
    {
        ~IdRelease()
        {
            lock (s_lock)
            {
                s_inUse[id] = false;
                Volatile.Write(ref s_releases, s_releases + 1);
            }
        }
    }
}
