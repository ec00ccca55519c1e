using System.Diagnostics;
using System.Runtime.CompilerServices;

namespace Scheduler.Timers;

/// <summary>
/// The storage of one wheel's <see cref="TimerWheel.DelayAsync"/> operations: 40-byte <see cref="DelaySlot"/>s in
/// chunks of 64, addressed by int handles, with a lock-free free list and the lock-free stack on which user threads
/// push slots for the driver to link or unlink (the delays' half of the pending-changes protocol,
/// <c>TimerWheel.Pending.cs</c>).
/// </summary>
/// <remarks>
/// <para>
/// Why a slab: a pending <c>Task.Delay</c> holds about 168 bytes (its promise and its <c>TimerQueueTimer</c>); an
/// object per delay with links, a deadline and a waker cannot get below a quarter of that. A slot in a chunk costs
/// its 40 bytes plus 1/64 of a chunk header, and a slab grows to the most delays ever pending at once and reuses
/// them after that, so a delay allocates nothing in steady state.
/// </para>
/// <para>
/// The slab keeps that high-water mark until its wheel is collected: chunks are never freed, which is also what
/// makes the free list's lock-free pop safe (a slot read after it was popped by someone else is still a slot).
/// </para>
/// </remarks>
internal sealed class DelaySlab
{
    private const int Empty = -1;
    private const int Closed = -2;

    private readonly Lock _growLock = new();
    private DelayChunk[] _chunks = new DelayChunk[4];
    private int _chunkCount;

    // The free list: (ABA tag << 32) | (handle + 1), 0 when empty; slots chained through DelaySlot.Next.
    private long _freeHead;

    // The pending-changes stack: a handle, Empty or Closed; slots chained through DelaySlot.PendingNext.
    private int _pendingHead = Empty;

    public DelaySlab(TimerWheel wheel)
    {
        Wheel = wheel;
    }

    /// <summary>The wheel the slab's delays belong to.</summary>
    public TimerWheel Wheel { get; }

    /// <summary>Slots allocated so far (the high-water mark of concurrently pending delays, rounded up to a chunk). For tests.</summary>
    public int Capacity => Volatile.Read(ref _chunkCount) * DelayChunk.SlotsPerChunk;

    /// <summary>The slot of <paramref name="handle"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public ref DelaySlot Slot(int handle) => ref ChunkOf(handle).Slot(handle & DelayChunk.IndexMask);

    /// <summary>The chunk holding <paramref name="handle"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public DelayChunk ChunkOf(int handle) => Volatile.Read(ref _chunks)[handle >> DelayChunk.IndexBits];

    /// <summary>Takes a free slot (its word holds only its generation), growing the slab by a chunk when none is free.</summary>
    public int Rent()
    {
        long head = Volatile.Read(ref _freeHead);
        while (true)
        {
            int handle = (int)head - 1;
            if (handle < 0)
            {
                handle = TryGrow();
                if (handle >= 0)
                {
                    return handle;
                }

                // Someone freed a slot or grew the slab meanwhile.
                head = Volatile.Read(ref _freeHead);
                continue;
            }

            // A racing pop may have taken this slot and rewritten its Next; the tag then fails our CAS.
            int next = Slot(handle).Next;
            long replacement = ((head >>> 32) + 1) << 32 | (uint)(next + 1);
            long seen = Interlocked.CompareExchange(ref _freeHead, replacement, head);
            if (seen == head)
            {
                return handle;
            }

            head = seen;
        }
    }

    /// <summary>Puts a slot nobody references any more back on the free list.</summary>
    public void Free(int handle) => PushFree(handle, handle);

    /// <summary>
    /// Pushes <paramref name="handle"/> onto the pending-changes stack; the caller has just set its Enqueued bit.
    /// <paramref name="wasEmpty"/> tells whether it went onto an empty stack. False, without pushing, once the stack is closed.
    /// </summary>
    public bool TryPushPending(int handle, out bool wasEmpty)
    {
        ref DelaySlot slot = ref Slot(handle);
        int head = Volatile.Read(ref _pendingHead);
        while (true)
        {
            if (head == Closed)
            {
                wasEmpty = false;
                return false;
            }

            // No ABA hazard: the only removal is taking the whole stack, and a slot is on it at most once.
            slot.PendingNext = head;
            int seen = Interlocked.CompareExchange(ref _pendingHead, handle, head);
            if (seen == head)
            {
                wasEmpty = head == Empty;
                return true;
            }

            head = seen;
        }
    }

    /// <summary>Takes the whole pending-changes stack (chained through <see cref="DelaySlot.PendingNext"/>, ending in a negative handle).</summary>
    public int TakePending()
    {
        int head = Interlocked.Exchange(ref _pendingHead, Empty);
        Debug.Assert(head != Closed, "Only disposal closes the stack, and then nothing drains again.");
        return head;
    }

    /// <summary>Closes the pending-changes stack for good (later pushes fail) and returns what it held.</summary>
    public int ClosePending()
    {
        int head = Interlocked.Exchange(ref _pendingHead, Closed);
        return head == Closed ? Empty : head;
    }

    /// <summary>Adds a chunk and returns its first slot, or -1 when the free list is no longer empty.</summary>
    private int TryGrow()
    {
        lock (_growLock)
        {
            // Someone may have grown the slab (or freed a slot) while we waited.
            if ((int)Volatile.Read(ref _freeHead) != 0)
            {
                return -1;
            }

            int index = _chunkCount;
            if (index == _chunks.Length)
            {
                // Readers hold the old table or the new one; both have every chunk whose handles they were given.
                DelayChunk[] grown = new DelayChunk[_chunks.Length * 2];
                Array.Copy(_chunks, grown, index);
                Volatile.Write(ref _chunks, grown);
            }

            int first = index << DelayChunk.IndexBits;
            var chunk = new DelayChunk(this, first);
            _chunks[index] = chunk;
            Volatile.Write(ref _chunkCount, index + 1);

            // Keep the first slot; chain the other 63 and push them in one step.
            int last = first + DelayChunk.SlotsPerChunk - 1;
            for (int handle = first + 1; handle < last; handle++)
            {
                chunk.Slot(handle & DelayChunk.IndexMask).Next = handle + 1;
            }

            PushFree(first + 1, last);
            return first;
        }
    }

    /// <summary>Pushes the chain <paramref name="first"/> … <paramref name="last"/> (already linked through Next) onto the free list.</summary>
    private void PushFree(int first, int last)
    {
        ref DelaySlot tail = ref Slot(last);
        long head = Volatile.Read(ref _freeHead);
        while (true)
        {
            tail.Next = (int)head - 1;
            long replacement = ((head >>> 32) + 1) << 32 | (uint)(first + 1);
            long seen = Interlocked.CompareExchange(ref _freeHead, replacement, head);
            if (seen == head)
            {
                return;
            }

            head = seen;
        }
    }
}
