using System.Collections.Concurrent;
using Scheduler.Timers;

namespace Scheduler.Tests.Timers;

/// <summary>
/// <see cref="TimerWheel.Dispose"/> racing every other call on other threads: nothing hangs, nothing is lost, and
/// the only failure a caller ever sees is <see cref="ObjectDisposedException"/> (or its own cancellation).
/// </summary>
[Collection(StressGroup.Name)]
public sealed class DisposalRaceTests
{
    private static readonly TimeSpan s_timeout = TimeSpan.FromSeconds(20);

    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(3)]
    public async Task Delays_timers_and_changes_racing_the_wheels_disposal_end_cleanly(int seed)
    {
        const int Threads = 3;
        var wheel = new TimerWheel();
        var unexpected = new ConcurrentQueue<Exception>();
        var delays = new ConcurrentQueue<(Task Task, bool Short, CancellationToken Token)>();
        using var ready = new Barrier(Threads + 1);
        var threads = new Thread[Threads];
        for (int t = 0; t < Threads; t++)
        {
            var random = new Random((seed * 100) + t);
            threads[t] = new Thread(() =>
            {
                var sources = new List<CancellationTokenSource>();
                ITimer? timer = null;
                ready.SignalAndWait();
                try
                {
                    while (true)
                    {
                        switch (random.Next(6))
                        {
                            case 0:
                                delays.Enqueue((wheel.DelayAsync(TimeSpan.FromMicroseconds(random.Next(50, 2_000))).AsTask(), true, default));
                                break;
                            case 1:
                                var source = new CancellationTokenSource();
                                sources.Add(source);
                                TimeSpan delay = random.Next(2) == 0 ? Timeout.InfiniteTimeSpan : TimeSpan.FromMinutes(10);
                                delays.Enqueue((wheel.DelayAsync(delay, source.Token).AsTask(), false, source.Token));
                                if (random.Next(2) == 0)
                                {
                                    source.Cancel();
                                }

                                break;
                            case 2:
                                delays.Enqueue((wheel.DelayAsync(TimeSpan.FromMinutes(10)).AsTask(), false, default));
                                break;
                            case 3:
                                timer?.Dispose();
                                timer = wheel.CreateTimer(_ => { }, null, TimeSpan.FromMilliseconds(random.Next(1, 3)), TimeSpan.FromMilliseconds(1));
                                break;
                            case 4:
                                if (timer?.Change(TimeSpan.FromMilliseconds(random.Next(0, 1_500)), Timeout.InfiniteTimeSpan) == false)
                                {
                                    unexpected.Enqueue(new InvalidOperationException("Change of an undisposed timer returned false"));
                                }

                                break;
                            default:
                                var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(30), wheel);
                                timeout.CancelAfter(TimeSpan.FromMilliseconds(random.Next(1, 3)));
                                sources.Add(timeout);
                                break;
                        }
                    }
                }
                catch (ObjectDisposedException)
                {
                    // The wheel is gone: every later call must throw the same.
                    try
                    {
                        _ = wheel.DelayAsync(TimeSpan.FromMilliseconds(1)).AsTask();
                        unexpected.Enqueue(new InvalidOperationException("DelayAsync after the disposal did not throw"));
                    }
                    catch (ObjectDisposedException)
                    {
                    }
                }
                catch (Exception exception)
                {
                    unexpected.Enqueue(exception);
                }
                finally
                {
                    timer?.Dispose();
                    foreach (CancellationTokenSource source in sources)
                    {
                        source.Dispose();
                    }
                }
            })
            {
                IsBackground = true,
            };
            threads[t].Start();
        }

        ready.SignalAndWait();

        // The random pause counts from a long delay pending: on a loaded machine the threads may not have run at all
        // within it, and a disposal before their first calls leaves no delay for it to complete (disposed is then 0).
        SpinWait.SpinUntil(() => delays.Any(d => !d.Short && !d.Token.IsCancellationRequested), s_timeout).Should().BeTrue("the racing threads make their calls");
        Thread.Sleep(new Random(seed).Next(5, 30));
        Task dispose = Task.Run(wheel.Dispose);
        await dispose.WaitAsync(s_timeout);
        foreach (Thread thread in threads)
        {
            thread.Join(s_timeout).Should().BeTrue("a caller racing the disposal never hangs");
        }

        unexpected.Should().BeEmpty();
        delays.Should().NotBeEmpty();
        int succeeded = 0, disposed = 0, canceled = 0;
        foreach ((Task task, bool isShort, CancellationToken token) in delays)
        {
            try
            {
                await task.WaitAsync(s_timeout);
                isShort.Should().BeTrue("only a short delay can have expired before the disposal");
                succeeded++;
            }
            catch (ObjectDisposedException)
            {
                disposed++;
            }
            catch (OperationCanceledException exception)
            {
                exception.CancellationToken.Should().Be(token, "a delay is canceled only by its own token");
                token.IsCancellationRequested.Should().BeTrue();
                canceled++;
            }
        }

        disposed.Should().BePositive($"long delays were pending at the disposal ({succeeded} succeeded, {canceled} canceled)");
    }
}
