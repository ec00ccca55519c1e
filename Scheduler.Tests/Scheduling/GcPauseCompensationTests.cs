using System.Diagnostics;

namespace Scheduler.Tests.Scheduling;

/// <summary>
/// A garbage collection stops every managed thread, the workers and the watchdog alike. Seen from the watchdog, a long
/// pause is a standstill of every worker; it must not be taken for workers blocked on (or slow with) queued work.
/// </summary>
[Collection(SerialResourceGroup.Name)] // long, forced collections stop every test's threads
public sealed class GcPauseCompensationTests(Xunit.Abstractions.ITestOutputHelper output)
{
    // Shorter than the default 100 ms: before the fix, 2 s of these collections started a compensation thread in about
    // half the runs at 50 ms, in none of four at 100 ms.
    private static readonly TimeSpan Delay = TimeSpan.FromMilliseconds(50);

    private sealed class Node
    {
        public Node? Next;
        public object? Payload;
    }

    [Fact]
    public async Task Long_collections_under_a_busy_scheduler_start_no_compensation_thread()
    {
        // A heap whose full, compacting collection takes long (about 110 ms on two cores).
        Node? ballast = null;
        for (int i = 0; i < 3_000_000; i++)
        {
            ballast = new Node { Next = ballast, Payload = (i & 7) == 0 ? new byte[16] : null };
        }

        using var scheduler = new WorkStealingTaskScheduler(new WorkStealingTaskSchedulerOptions
        {
            WorkerCount = 2,
            ThreadNamePrefix = "gc-pause",
            BlockingCompensationDelay = Delay,
        });
        int stop = 0;
        long ran = 0;

        // Items of a fixed amount of CPU work, shorter than the delay: between collections the workers progress well
        // within it. Work stays queued throughout. (A deadline by the clock would end an item at once after a pause.)
        int spins = CalibrateSpins(TimeSpan.FromMilliseconds(Delay.TotalMilliseconds / 3));
        var items = new Task[400];
        for (int i = 0; i < items.Length; i++)
        {
            items[i] = scheduler.Factory.StartNew(() =>
            {
                if (Volatile.Read(ref stop) == 0)
                {
                    Thread.SpinWait(spins);
                    Interlocked.Increment(ref ran);
                }
            });
        }

        TimeSpan before = GC.GetTotalPauseDuration();
        var watch = Stopwatch.StartNew();
        int collections = 0;
        while (watch.Elapsed < TimeSpan.FromSeconds(2))
        {
            GC.Collect(2, GCCollectionMode.Forced, blocking: true, compacting: true);
            collections++;
            Thread.Sleep(2); // a gap shorter than an item: the pauses, not the gaps, make up the standstill
        }

        TimeSpan paused = GC.GetTotalPauseDuration() - before;
        Volatile.Write(ref stop, 1);
        await Task.WhenAll(items).WaitAsync(TimeSpan.FromSeconds(30));
        GC.KeepAlive(ballast);
        output.WriteLine($"{collections} collections, paused {paused.TotalMilliseconds:F0} ms of {watch.ElapsedMilliseconds} ms, {ran} items ran, {scheduler.CompensationThreadsStarted} compensation thread(s)");
        paused.Should().BeGreaterThan(TimeSpan.FromSeconds(1), "the test needs the runtime stopped most of the time");
        Interlocked.Read(ref ran).Should().BeGreaterThan(0);
        scheduler.CompensationThreadsStarted.Should().Be(0, "a collection's pause is no standstill of the workers");
    }

    private static int CalibrateSpins(TimeSpan target)
    {
        int spins = 1 << 10;
        while (true)
        {
            var watch = Stopwatch.StartNew();
            Thread.SpinWait(spins);
            if (watch.Elapsed >= target / 4)
            {
                return (int)Math.Min(int.MaxValue, spins * (target / watch.Elapsed));
            }

            spins *= 2;
        }
    }
}
