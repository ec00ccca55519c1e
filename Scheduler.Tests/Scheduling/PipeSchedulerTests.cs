using System.IO.Pipelines;

namespace Scheduler.Tests.Scheduling;

public sealed class PipeSchedulerTests
{
    [Fact]
    public async Task Schedule_runs_the_callback_with_its_state_on_a_worker()
    {
        var scheduler = SchedulerTestHelpers.Create(2);
        await using var disposeScheduler = SchedulerTestHelpers.DisposeWithin(scheduler);
        var ran = new TaskCompletionSource<(object? State, bool OnWorker)>(TaskCreationOptions.RunContinuationsAsynchronously);
        object state = new();
        scheduler.PipeScheduler.Schedule(s => ran.SetResult((s, scheduler.IsWorkerThread)), state);
        var result = await ran.Task.WithTimeout();
        result.State.Should().BeSameAs(state);
        result.OnWorker.Should().BeTrue();
        FluentActions.Invoking(() => scheduler.PipeScheduler.Schedule(null!, null)).Should().Throw<ArgumentNullException>();
    }

    [Fact]
    public void Schedule_allocates_nothing_per_call_in_steady_state()
    {
        var scheduler = SchedulerTestHelpers.Create(1);
        using var disposeScheduler = SchedulerTestHelpers.DisposeBoundedOnExit(scheduler);
        PipeScheduler pipeScheduler = scheduler.PipeScheduler;
        int done = 0;
        Action<object?> callback = _ => Interlocked.Increment(ref done);
        object state = new();

        // Warm up: queue segments grow once, then are reused.
        for (int i = 0; i < 50_000; i++)
        {
            pipeScheduler.Schedule(callback, state);
        }

        SpinWait.SpinUntil(() => Volatile.Read(ref done) == 50_000, SchedulerTestHelpers.Timeout).Should().BeTrue();

        const int Calls = 100_000;
        long before = GC.GetAllocatedBytesForCurrentThread();
        for (int i = 0; i < Calls; i++)
        {
            pipeScheduler.Schedule(callback, state);
            if ((i & 1023) == 1023)
            {
                // Keep the queue short so it reuses its segments instead of growing.
                SpinWait.SpinUntil(() => Volatile.Read(ref done) >= 50_000 + i - 64, SchedulerTestHelpers.Timeout);
            }
        }

        long perCall = (GC.GetAllocatedBytesForCurrentThread() - before) / Calls;
        SpinWait.SpinUntil(() => Volatile.Read(ref done) == 50_000 + Calls, SchedulerTestHelpers.Timeout).Should().BeTrue();
        perCall.Should().Be(0, "the callback and state travel in the queue's struct slot");
    }

    [Fact]
    public async Task A_pipe_with_the_scheduler_resumes_readers_and_writers_on_workers()
    {
        var scheduler = SchedulerTestHelpers.Create(2);
        await using var disposeScheduler = SchedulerTestHelpers.DisposeWithin(scheduler);
        var pipe = new Pipe(new PipeOptions(readerScheduler: scheduler.PipeScheduler, writerScheduler: scheduler.PipeScheduler,
            pauseWriterThreshold: 1024, resumeWriterThreshold: 512, useSynchronizationContext: false));
        int offWorker = 0;

        Task writer = Task.Run(async () =>
        {
            for (int i = 0; i < 1000; i++)
            {
                await pipe.Writer.WriteAsync(new byte[100]);
            }

            await pipe.Writer.CompleteAsync();
        });

        // The reader runs on the scheduler: every asynchronous read resumes through the PipeScheduler.
        long total = await scheduler.Factory.StartNew(async () =>
        {
            long sum = 0;
            while (true)
            {
                ReadResult result = await pipe.Reader.ReadAsync();
                if (!scheduler.IsWorkerThread)
                {
                    Interlocked.Increment(ref offWorker);
                }

                sum += result.Buffer.Length;
                pipe.Reader.AdvanceTo(result.Buffer.End);
                if (result.IsCompleted)
                {
                    return sum;
                }
            }
        }).Unwrap().WithTimeout();

        await writer.WithTimeout();
        total.Should().Be(100_000);
        offWorker.Should().Be(0);
    }
}
