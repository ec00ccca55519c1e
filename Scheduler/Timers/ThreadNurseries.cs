using System.Runtime.CompilerServices;

namespace Scheduler.Timers;

/// <summary>
/// Each thread's nursery (<see cref="TimerNursery"/>), found from the thread's <see cref="Thread"/> object: a
/// process-wide table indexed by <see cref="Thread.ManagedThreadId"/>, in place of a <c>[ThreadStatic]</c> field.
/// </summary>
/// <remarks>
/// <para>
/// Why not a thread-static: on Linux every thread-static read that the JIT expands inline is a call to
/// <c>__tls_get_addr</c> (the runtime is a shared library), one per class whose thread-statics a method reads. A
/// creation already pays one for <see cref="Thread.CurrentThread"/> inside <see cref="ExecutionContext.Capture"/>;
/// reading <see cref="Thread.CurrentThread"/> again in the same method reuses that call's result (the JIT treats the
/// thread-static base as a common subexpression), so the lookup here costs a bounds check and two loads instead of a
/// second call: 11.6 % of a create+dispose pair's <c>perf</c> samples sat in <c>__tls_get_addr</c> for the two
/// (docs/timers.md).
/// </para>
/// <para>
/// Managed thread ids are small and reused once a thread exits, so the table stays about as long as the most threads
/// alive at once. A slot may still hold the nursery of an exited thread whose id was handed to a new one: a lookup
/// checks <see cref="TimerNursery.Owner"/>, so the new thread sees none and registers its own, which replaces it.
/// (CoreCLR reuses an id only once the exited thread's <see cref="Thread"/> object is collected, which a slot
/// prevents: the wheel clears the slots of the nurseries it sheds or closes, <see cref="Forget"/>. So on CoreCLR the
/// owner check never fails and no test can make it; it stays for a runtime that hands an id out again at thread exit.)
/// Every write takes <see cref="s_lock"/>, so that a growing copy never loses one; a thread reads its own slot without
/// the lock, and only its own.
/// </para>
/// </remarks>
internal static class ThreadNurseries
{
    private static readonly Lock s_lock = new();

    // Replaced (grown) under s_lock; a reader sees either array, and both hold its own slot (a copy is taken under
    // the same lock as every write).
    private static TimerNursery?[] s_byThreadId = new TimerNursery?[64];

    /// <summary>Tests only: how many thread ids the table covers now (ids at or beyond it have no slot yet).</summary>
    internal static int LengthForTests => Volatile.Read(ref s_byThreadId).Length;

    /// <summary>The nursery that <paramref name="thread"/> (the calling thread) registered last, or null.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static TimerNursery? Of(Thread thread)
    {
        TimerNursery?[] table = Volatile.Read(ref s_byThreadId);
        int id = thread.ManagedThreadId;
        if ((uint)id < (uint)table.Length)
        {
            TimerNursery? nursery = table[id];
            if (nursery is not null && nursery.Owner == thread)
            {
                return nursery;
            }
        }

        return null;
    }

    /// <summary>Makes <paramref name="nursery"/> the nursery of <paramref name="thread"/> (its <see cref="TimerNursery.Owner"/>); null forgets the thread's.</summary>
    internal static void Set(Thread thread, TimerNursery? nursery)
    {
        int id = thread.ManagedThreadId;
        lock (s_lock)
        {
            TimerNursery?[] table = s_byThreadId;
            if (id >= table.Length)
            {
                if (nursery is null)
                {
                    return;
                }

                Array.Resize(ref table, (int)Math.Min(Array.MaxLength, Math.Max(2L * table.Length, id + 1L)));
                Volatile.Write(ref s_byThreadId, table);
            }

            table[id] = nursery;
        }
    }

    /// <summary>Clears the slot of <paramref name="nursery"/>'s owner if it still holds that nursery (shed or closed by its wheel).</summary>
    internal static void Forget(TimerNursery nursery)
    {
        int id = nursery.Owner.ManagedThreadId;
        lock (s_lock)
        {
            TimerNursery?[] table = s_byThreadId;
            if ((uint)id < (uint)table.Length && table[id] == nursery)
            {
                table[id] = null;
            }
        }
    }
}
