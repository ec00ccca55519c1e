using System.Runtime.ExceptionServices;
using System.Threading.Tasks.Sources;
using Scheduler.Sources;
using Scheduler.Tests.Scheduling;

namespace Scheduler.Tests.Sources;

/// <summary>The awaitable from docs/wakers.md, verbatim in shape: it must compile, pool itself and resume on the awaiting worker.</summary>
public sealed class DocsSampleTests
{
    [Fact]
    public async Task Sample_awaitable_completes_pools_itself_and_rejects_stale_versions()
    {
        var operation = ReceiveOperation.Rent();
        short version = operation.Version;
        operation.Complete(version, 42).Should().BeTrue();
        operation.Fail(version, new IOException()).Should().BeFalse();
        (await operation.Task).Should().Be(42);

        operation.Complete(version, 1).Should().BeFalse("the version is stale after the result was read");
        RentedUntilFound(operation).Should().BeTrue("the operation returned itself to its pool");
    }

    [Fact]
    public void Two_threads_reading_one_completed_operation_at_once_exactly_one_gets_the_result()
    {
        // The docs' GetResult reads and resets in one step (Consume): of two racing reads the loser throws. The looser
        // GetResult-then-TryReset the page showed before let both readers return the same result.
        const int Rounds = 3_000;
        int doubleReads = 0;
        int lostReads = 0;
        using var start = new Barrier(2);
        for (int round = 0; round < Rounds; round++)
        {
            var operation = ReceiveOperation.Rent();
            short version = operation.Version;
            ValueTask<int> task = operation.Task;
            operation.Complete(version, round).Should().BeTrue();
            int successes = 0;
            int failures = 0;
            void Read()
            {
                start.SignalAndWait();
                try
                {
                    task.GetAwaiter().GetResult().Should().Be(round);
                    Interlocked.Increment(ref successes);
                }
                catch (InvalidOperationException)
                {
                    Interlocked.Increment(ref failures);
                }
            }

            var other = new Thread(Read);
            other.Start();
            Read();
            other.Join();
            if (successes != 1)
            {
                doubleReads += successes > 1 ? 1 : 0;
                lostReads += successes == 0 ? 1 : 0;
            }
        }

        doubleReads.Should().Be(0, "one completed operation must never reach two readers");
        lostReads.Should().Be(0, "one of the two readers always gets the result");
    }

    // The next Rent is not always the object just returned: a thread that gets its pool id here can inherit, in its
    // thread-cache slot, an object that an ended thread with the same id left (the other test's worker returns one).
    // So look for it among the few free objects this class's pool can hold.
    private static bool RentedUntilFound(ReceiveOperation operation)
    {
        for (int i = 0; i < 16; i++)
        {
            if (ReferenceEquals(ReceiveOperation.Rent(), operation))
            {
                return true;
            }
        }

        return false;
    }

    [Fact]
    public async Task Sample_awaitable_resumes_on_the_awaiting_worker()
    {
        var scheduler = new WorkStealingTaskScheduler(2);
        await using var disposeScheduler = SchedulerTestHelpers.DisposeWithin(scheduler);
        using var blockers = new WorkerBlockers(scheduler, 1);
        var operation = ReceiveOperation.Rent();
        short version = operation.Version;
        using var awaiting = new ManualResetEventSlim();
        var io = new Thread(() =>
        {
            awaiting.Wait();
            Thread.Sleep(5);
            operation.Complete(version, 7);
        });
        io.Start();

        (bool same, int bytes) = await scheduler.Factory.StartNew(async () =>
        {
            Thread before = Thread.CurrentThread;
            ValueTask<int> task = operation.Task;
            awaiting.Set();
            int received = await task;
            return (Thread.CurrentThread == before, received);
        }).Unwrap();

        io.Join();
        same.Should().BeTrue();
        bytes.Should().Be(7);
    }

    private sealed class ReceiveOperation : IValueTaskSource<int>, IThreadPoolWorkItem
    {
        private static readonly ValueTaskSourcePool<ReceiveOperation> s_pool = new(() => new ReceiveOperation(), capacity: 256);

        private WakerCore<int> _core;

        private ReceiveOperation() => _core = new WakerCore<int>(this);

        public static ReceiveOperation Rent() => s_pool.Rent();

        public ValueTask<int> Task => new(this, _core.Version);

        public short Version => _core.Version;

        public bool Complete(short version, int bytes) => _core.TrySetResult(version, bytes);

        public bool Fail(short version, Exception error) => _core.TrySetException(version, error);

        public ValueTaskSourceStatus GetStatus(short token) => _core.GetStatus(token);

        public void OnCompleted(Action<object?> continuation, object? state, short token, ValueTaskSourceOnCompletedFlags flags) =>
            _core.OnCompleted(continuation, state, token, flags);

        public int GetResult(short token)
        {
            _core.Consume(token, out int result, out ExceptionDispatchInfo? error);
            s_pool.Return(this);
            error?.Throw();
            return result;
        }

        void IThreadPoolWorkItem.Execute() => _core.InvokeContinuation();
    }
}
