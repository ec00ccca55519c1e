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
            if (_core.GetStatus(token) == ValueTaskSourceStatus.Pending)
            {
                throw new InvalidOperationException("Not completed yet.");
            }

            try
            {
                return _core.GetResult(token);
            }
            finally
            {
                if (_core.TryReset(token))
                {
                    s_pool.Return(this);
                }
            }
        }

        void IThreadPoolWorkItem.Execute() => _core.InvokeContinuation();
    }
}
