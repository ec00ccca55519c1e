using System.Diagnostics;
using System.Diagnostics.CodeAnalysis;

namespace Scheduler.Sources;

/// <summary>The misuse errors every pooled <see cref="System.Threading.Tasks.Sources.IValueTaskSource"/> of the library reports the same way.</summary>
internal static class PooledSourceErrors
{
    [DoesNotReturn]
    [StackTraceHidden]
    public static void ThrowStaleToken() =>
        throw new InvalidOperationException("The awaited operation is no longer current: a ValueTask backed by a pooled source can be awaited (or its result read) only once.");

    [DoesNotReturn]
    [StackTraceHidden]
    public static void ThrowNotCompleted() =>
        throw new InvalidOperationException("The operation has not completed yet; await the ValueTask instead of reading its result directly.");

    [DoesNotReturn]
    [StackTraceHidden]
    public static void ThrowConcurrentConsumer() =>
        throw new InvalidOperationException("The operation is being awaited or its result read by another consumer at this moment: a ValueTask backed by a pooled source can be awaited (or its result read) only once.");

    [DoesNotReturn]
    [StackTraceHidden]
    public static void ThrowContinuationAlreadyRegistered() =>
        throw new InvalidOperationException("A continuation is already registered: a ValueTask backed by a pooled source can be awaited only once.");
}
