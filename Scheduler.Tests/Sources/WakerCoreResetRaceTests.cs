using System.Diagnostics;
using System.Threading.Tasks.Sources;
using Xunit.Abstractions;

namespace Scheduler.Tests.Sources;

/// <summary>
/// The reset of a consumed operation against a producer that completes "the current operation" (the version-less
/// <c>TrySetResult</c>) at that very moment. Between its claim of the outcome and the advance of the version, a reset
/// holds the core in a state no producer may claim: a producer that got in there would see its completion reported as
/// won and then wiped by the advance, read by nobody.
/// </summary>
public sealed class WakerCoreResetRaceTests(ITestOutputHelper output)
{
    [Fact]
    public async Task A_producer_racing_the_readers_reset_never_wins_a_completion_that_nobody_reads()
    {
        // Session 53's Stryker run of WakerCore.cs: TryReset's claim written as (state & ~StatusMask) & StatusConsumed,
        // which is 0 (pending, version 0), survived every test. Here the producer wins in that window: its value is
        // then lost and the reader's next read is one ahead. 2,000,000 operations or 3 s, whichever ends first; the
        // mutant failed at the second operation in each of three runs.
        const int Operations = 2_000_000;
        TimeSpan budget = TimeSpan.FromSeconds(3);
        var waker = new TestWaker<long>();
        long won = 0; // the producer's successful completions: the values 0, 1, 2, ... in that order
        bool stop = false;
        var producer = new Thread(() =>
        {
            var spinner = new SpinWait();
            while (!Volatile.Read(ref stop))
            {
                if (waker.Core.TrySetResult(won))
                {
                    Volatile.Write(ref won, won + 1);
                }
                else
                {
                    spinner.SpinOnce(sleep1Threshold: -1); // yields on one CPU, so the reader gets to reset
                }
            }
        })
        { IsBackground = true, Name = "reset race producer" };

        long read = 0;
        var stopwatch = Stopwatch.StartNew();
        producer.Start();
        try
        {
            await Task.Run(() =>
            {
                var spinner = new SpinWait();
                while (read < Operations && stopwatch.Elapsed < budget)
                {
                    short token = waker.Version;
                    if (waker.Core.GetStatus(token) == ValueTaskSourceStatus.Pending)
                    {
                        spinner.SpinOnce(sleep1Threshold: -1);
                        continue;
                    }

                    long value = waker.Core.GetResult(token);
                    waker.Core.TryReset(token).Should().BeTrue("the one reader resets each operation it read");
                    value.Should().Be(read, "every completion the producer won is read, in order (operation {0})", read);
                    read++;
                }
            });
        }
        finally
        {
            Volatile.Write(ref stop, true);
            producer.Join();
        }

        // The last win may still wait for its reader; none may be missing.
        long pending = waker.Core.GetStatus(waker.Version) == ValueTaskSourceStatus.Succeeded ? 1 : 0;
        output.WriteLine($"{read:N0} operations read in {stopwatch.Elapsed.TotalSeconds:F1} s");
        Volatile.Read(ref won).Should().Be(read + pending, "every won completion was read, or is the one still pending");
        read.Should().BeGreaterThan(1_000, "the race needs a meaningful number of operations even on a slow machine");
    }
}
