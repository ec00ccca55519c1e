using System.Collections.Concurrent;
using Scheduler.Tests.Scheduling;
using Scheduler.Tests.Sources;
using Scheduler.Timers;

// These tests hold ValueTasks on purpose (pending delays, stale tokens).
#pragma warning disable CA2012

namespace Scheduler.Tests.Timers;

/// <summary>The slab under <see cref="TimerWheel.DelayAsync"/>: its lock-free free list, slot reuse and where continuations run.</summary>
public sealed class DelaySlabTests
{
    private static readonly TimeSpan s_timeout = TimeSpan.FromSeconds(20);

    /// <summary>
    /// The free list is a tagged Treiber stack: threads that rent and free at random moments never get the same slot
    /// at the same time (an ABA slip would hand one out twice), and nothing is lost (the slab stays at the most slots
    /// held at once).
    /// </summary>
    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(3)]
    [InlineData(4)]
    public void Renting_and_freeing_from_racing_threads_never_hands_out_a_slot_twice(int seed)
    {
        using var owner = new TimerWheel(TimeSpan.FromMilliseconds(1), new ManualClock(), startDriver: false);
        var slab = new DelaySlab(owner);
        const int Threads = 4;
        const int HeldPerThread = 40;
        var holders = new ConcurrentDictionary<int, int>();
        int doubles = 0;

        var threads = Enumerable.Range(0, Threads).Select(t => new Thread(() =>
        {
            var random = new Random((seed * 31) + t);
            var held = new List<int>();
            for (int n = 0; n < 100_000; n++)
            {
                if (held.Count < HeldPerThread && (held.Count == 0 || random.Next(2) == 0))
                {
                    int handle = slab.Rent();
                    if (!holders.TryAdd(handle, t))
                    {
                        Interlocked.Increment(ref doubles);
                    }

                    held.Add(handle);
                }
                else
                {
                    int at = random.Next(held.Count);
                    int handle = held[at];
                    held[at] = held[^1];
                    held.RemoveAt(held.Count - 1);
                    holders.TryRemove(handle, out _);
                    slab.Free(handle);
                }

                if (random.Next(64) == 0)
                {
                    Thread.Yield();
                }
            }

            foreach (int handle in held)
            {
                holders.TryRemove(handle, out _);
                slab.Free(handle);
            }
        })).ToList();
        threads.ForEach(t => t.Start());
        threads.ForEach(t => t.Join());

        doubles.Should().Be(0);
        slab.Capacity.Should().BeLessThanOrEqualTo((Threads * HeldPerThread) + (Threads * DelayChunk.SlotsPerChunk), "freed slots are rented again before the slab grows");

        // Every slot is on the free list exactly once: renting them all gives distinct handles without growing.
        int capacity = slab.Capacity;
        var all = Enumerable.Range(0, capacity).Select(_ => slab.Rent()).ToList();
        all.Should().OnlyHaveUniqueItems();
        slab.Capacity.Should().Be(capacity);
    }

    [Fact]
    public async Task Many_sequential_uses_of_one_slot_wrap_the_generation_and_each_completes_its_own_way()
    {
        using var wheel = new TimerWheel(TimeSpan.FromMilliseconds(1));
        using var cts = new CancellationTokenSource();
        ValueTask first = wheel.DelayAsync(TimeSpan.FromTicks(1));
        await first;

        // Sequential delays take the same slot again and again (the free list is LIFO): 3,000 uses wrap its 10-bit generation.
        for (int use = 0; use < 3_000; use++)
        {
            // Alternate outcomes so a stale completion from the previous use would show as the wrong one.
            if (use % 2 == 0)
            {
                using var each = new CancellationTokenSource();
                ValueTask delay = wheel.DelayAsync(Timeout.InfiniteTimeSpan, each.Token);
                each.Cancel();
                Func<Task> canceled = async () => await delay;
                (await canceled.Should().ThrowAsync<OperationCanceledException>()).Which.CancellationToken.Should().Be(each.Token);
            }
            else
            {
                await wheel.DelayAsync(TimeSpan.FromTicks(1), cts.Token);
            }
        }

        wheel.DelayCapacity.Should().Be(DelayChunk.SlotsPerChunk);
        wheel.PendingCount.Should().Be(0);
        Func<Task> stale = async () => await first;
        await stale.Should().ThrowAsync<InvalidOperationException>("the slot has moved on to later uses");
    }

    [Fact]
    public async Task Canceling_the_token_of_a_finished_delay_leaves_the_next_use_of_its_slot_alone()
    {
        // The cancellation registration is per slot (its side state) and must be gone with the use it served: the
        // slot's next use (the free list is LIFO, so the very next delay) would otherwise be completed by a token that
        // never belonged to it.
        var clock = new ManualClock();
        using var wheel = new TimerWheel(TimeSpan.FromMilliseconds(1), clock, startDriver: false);
        using var firstToken = new CancellationTokenSource();
        ValueTask first = wheel.DelayAsync(TimeSpan.FromMilliseconds(5), firstToken.Token);
        clock.Advance(TimeSpan.FromMilliseconds(5));
        wheel.RunDueTimers();
        first.IsCompletedSuccessfully.Should().BeTrue();
        await first;

        ValueTask next = wheel.DelayAsync(TimeSpan.FromMinutes(1));
        firstToken.Cancel();
        next.IsCompleted.Should().BeFalse("the first delay's token has nothing to do with the slot's next use");
        wheel.PendingCount.Should().Be(1);
        wheel.Dispose();
        Func<Task> disposed = async () => await next;
        await disposed.Should().ThrowAsync<ObjectDisposedException>("the next use ends only with the wheel");
    }

    [Fact]
    public async Task Awaiters_under_two_schedulers_sharing_a_chunk_each_resume_on_their_own()
    {
        var first = new WorkStealingTaskScheduler(1);
        await using var disposeFirst = SchedulerTestHelpers.DisposeWithin(first);
        var second = new WorkStealingTaskScheduler(1);
        await using var disposeSecond = SchedulerTestHelpers.DisposeWithin(second);
        using var wheel = new TimerWheel();

        // The chunk shares the first awaiter's scheduler; the other's needs the slot's side context.
        async Task<bool> AwaitOn(WorkStealingTaskScheduler scheduler)
        {
            return await Task.Factory.StartNew(async () =>
            {
                await wheel.DelayAsync(TimeSpan.FromMilliseconds(2));
                return TaskScheduler.Current == scheduler && scheduler.TryGetCurrentWorkerIndex(out _);
            }, CancellationToken.None, TaskCreationOptions.None, scheduler).Unwrap();
        }

        var results = await Task.WhenAll(Enumerable.Range(0, 40).Select(i => AwaitOn(i % 2 == 0 ? first : second))).WaitAsync(s_timeout);
        results.Should().OnlyContain(onOwnScheduler => onOwnScheduler);
        wheel.DelayCapacity.Should().Be(DelayChunk.SlotsPerChunk, "all forty shared one chunk");
    }

    [Fact]
    public async Task OnCompleted_flows_the_execution_context_and_UnsafeOnCompleted_does_not()
    {
        using var wheel = new TimerWheel();
        var local = new AsyncLocal<string?>();
        var flowed = new TaskCompletionSource<string?>(TaskCreationOptions.RunContinuationsAsynchronously);
        var unflowed = new TaskCompletionSource<string?>(TaskCreationOptions.RunContinuationsAsynchronously);

        local.Value = "caller";
        ValueTask first = wheel.DelayAsync(TimeSpan.FromMilliseconds(1));
        first.GetAwaiter().OnCompleted(() => flowed.SetResult(local.Value));
        ValueTask second = wheel.DelayAsync(TimeSpan.FromMilliseconds(1));
        second.GetAwaiter().UnsafeOnCompleted(() => unflowed.SetResult(local.Value));
        local.Value = null;

        (await flowed.Task.WaitAsync(s_timeout)).Should().Be("caller");
        (await unflowed.Task.WaitAsync(s_timeout)).Should().BeNull();
        first.GetAwaiter().GetResult();
        second.GetAwaiter().GetResult();
    }

    [Fact]
    public async Task Under_a_SynchronizationContext_the_continuation_is_posted_to_it()
    {
        // A clock the test moves, not the real one: the delay must still be pending when it is awaited, or the await
        // goes on synchronously on the thread (whose Current is the context) and nothing is posted. With a real 1 ms
        // delay, a thread preempted for a millisecond between DelayAsync and the await did exactly that.
        var clock = new ManualClock();
        using var wheel = new TimerWheel(TimeSpan.FromMilliseconds(1), clock, startDriver: false);
        var context = new RecordingSynchronizationContext();
        var resumedInContext = new TaskCompletionSource<bool>(TaskCreationOptions.RunContinuationsAsynchronously);

        var thread = new Thread(() =>
        {
            SynchronizationContext.SetSynchronizationContext(context);
            _ = Run();
        });
        thread.Start();
        thread.Join();

        resumedInContext.Task.IsCompleted.Should().BeFalse("the delay is pending until the clock moves");
        clock.Advance(TimeSpan.FromMilliseconds(2));
        wheel.RunDueTimers();
        (await resumedInContext.Task.WaitAsync(s_timeout)).Should().BeTrue();
        context.Posts.Should().Be(1);

        async Task Run()
        {
            await wheel.DelayAsync(TimeSpan.FromMilliseconds(1));
            resumedInContext.SetResult(SynchronizationContext.Current == context);
        }
    }
}
