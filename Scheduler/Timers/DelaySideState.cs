namespace Scheduler.Timers;

/// <summary>
/// What only some delays of a slot need: a cancellation registration (this object is its callback state), a
/// captured <see cref="System.Threading.ExecutionContext"/>, a scheduling context other than the chunk's shared one.
/// Created the first time a slot needs it and kept for the slot's later uses; each use clears what it set.
/// </summary>
internal sealed class DelaySideState(DelayChunk chunk, int index)
{
    internal CancellationTokenRegistration Registration;
    internal CancellationToken Token;
    internal ExecutionContext? ExecutionContext;
    internal object? Context;

    internal void OnCanceled() => chunk.OnCanceled(index);
}
