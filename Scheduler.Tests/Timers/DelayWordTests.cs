using Scheduler.Timers;

namespace Scheduler.Tests.Timers;

/// <summary>
/// The bit fields of a delay slot's word (<see cref="DelayWord"/>) that are computed rather than masked: the awaiting
/// worker's index, which routes the continuation to that worker's queue, and the generation, which tells a stale
/// <see cref="ValueTask"/> from the slot's next use. The mutation run over <c>DelaySlot.cs</c> (session 51) found both
/// untested: a word that lost the worker (every continuation to the global queue) or never changed generation passed
/// the timer tests, since a delay still completed either way.
/// </summary>
public sealed class DelayWordTests
{
    private const int OtherBits = DelayWord.GenerationMask | DelayWord.Completed | DelayWord.Registering | DelayWord.Disposed
        | DelayWord.ContinuationRegistered | DelayWord.Enqueued | DelayWord.CancelRequested | DelayWord.WheelOwned
        | DelayWord.BatchOwned | DelayWord.ConsumerDone | DelayWord.Infinite | DelayWord.ContextMask;

    [Theory]
    [InlineData(0)]
    [InlineData(1)]
    [InlineData(255)]
    [InlineData(256)] // the top bit of the word: read back unsigned
    [InlineData(DelayWord.NoWorker - 1)]
    public void A_worker_index_reads_back_from_its_bits_whatever_else_the_word_holds(int worker)
    {
        int bits = DelayWord.WorkerBits(worker);

        (bits & ~DelayWord.WorkerMask).Should().Be(0, "the index stays in its own field");
        DelayWord.WorkerIndex(bits).Should().Be(worker);
        DelayWord.WorkerIndex(bits | OtherBits).Should().Be(worker);
    }

    [Theory]
    [InlineData(-1)] // awaited off the scheduler's workers
    [InlineData(DelayWord.NoWorker)] // too many workers to name
    [InlineData(DelayWord.NoWorker + 1)] // shifted unchecked, these two would alias worker 0 and worker 488
    [InlineData(1000)]
    [InlineData(int.MaxValue)]
    public void A_thread_that_is_no_nameable_worker_reads_back_as_none(int worker)
    {
        int bits = DelayWord.WorkerBits(worker);

        bits.Should().Be(DelayWord.WorkerMask);
        DelayWord.WorkerIndex(bits | OtherBits).Should().Be(-1);
    }

    [Theory]
    [InlineData(0, 1)]
    [InlineData(6, 7)]
    [InlineData(DelayWord.GenerationMask, 0)] // wraps within its 10 bits
    public void The_next_generation_is_one_more_within_the_generation_bits_only(int generation, int next)
    {
        DelayWord.NextGeneration(generation).Should().Be(next);
        DelayWord.NextGeneration(generation | (OtherBits & ~DelayWord.GenerationMask) | DelayWord.WorkerBits(300)).Should().Be(next);
    }
}
