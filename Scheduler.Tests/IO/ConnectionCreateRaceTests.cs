using System.Diagnostics.Tracing;
using System.IO.Pipelines;
using System.Net.Sockets;
using Scheduler.IO;
using Scheduler.Tests.Scheduling;

namespace Scheduler.Tests.IO;

/// <summary>
/// <see cref="ReactorConnection.Create"/> racing the disposal of the reactor's scheduler. The TPL's own event source
/// reports every task as it is queued, on the queueing thread and before the scheduler sees it: a listener there
/// disposes the scheduler right before the k-th task that Create queues, which puts the disposal at each point of
/// Create on purpose.
/// </summary>
public sealed class ConnectionCreateRaceTests
{
    private static readonly TimeSpan Bound = TimeSpan.FromSeconds(10);

    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(3)]
    public async Task A_scheduler_disposed_while_Create_queues_its_loops_either_fails_cleanly_or_works(int disposeBeforeTask)
    {
        var io = new IoTestContext();
        try
        {
            using ReactorSocket listener = io.Listen();
            using Socket peer = IoTestContext.NewPlainSocket();
            using ReactorSocket server = await io.AcceptConnectedAsync(listener, peer);

            ReactorConnection? connection = null;
            TaskSchedulerException? refused = null;
            int queued = 0;
            using (new TaskQueuedListener(io.Scheduler.Id, Environment.CurrentManagedThreadId, () =>
            {
                if (++queued == disposeBeforeTask)
                {
                    SchedulerTestHelpers.DisposeBounded(io.Scheduler); // joined before the task is queued, bounded
                }
            }))
            {
                try
                {
                    connection = ReactorConnection.Create(server);
                }
                catch (TaskSchedulerException e)
                {
                    refused = e;
                }
            }

            if (refused is not null)
            {
                // Nothing may have started: the socket is still the caller's, with no loop receiving from it.
                refused.InnerException.Should().BeOfType<ObjectDisposedException>();
                await peer.SendAsync(new byte[] { 5 });
                var buffer = new byte[4];
                (await server.ReceiveAsync(buffer).AsTask().WaitAsync(Bound)).Should().Be(1);
                buffer[0].Should().Be(5);
                return;
            }

            // Create went through: the connection carries bytes both ways.
            await using (IoTestContext.DisposeWithin(connection!))
            {
                await peer.SendAsync(new byte[] { 6 });
                ReadResult read = await connection!.Input.ReadAsync().AsTask().WaitAsync(Bound);
                read.Buffer.FirstSpan[0].Should().Be(6);
                connection.Input.AdvanceTo(read.Buffer.End);
                await connection.Output.WriteAsync(new byte[] { 7 });
                var buffer = new byte[4];
                (await peer.ReceiveAsync(buffer.AsMemory()).AsTask().WaitAsync(Bound)).Should().Be(1);
                buffer[0].Should().Be(7);
            }
        }
        finally
        {
            await io.DisposeAsync();
        }
    }

    /// <summary>Calls back for each task queued to one scheduler from one thread (the TPL's TaskScheduled event).</summary>
    private sealed class TaskQueuedListener : EventListener
    {
        private readonly int _schedulerId;
        private readonly int _threadId;
        private readonly Action _onQueued;
        private readonly EventSource? _pending;

        public TaskQueuedListener(int schedulerId, int threadId, Action onQueued)
        {
            _schedulerId = schedulerId;
            _threadId = threadId;
            _onQueued = onQueued;
            // The base constructor reports existing sources before these fields are set: enable the TPL's here.
            foreach (EventSource source in EventSource.GetSources())
            {
                if (source.Name == "System.Threading.Tasks.TplEventSource")
                {
                    _pending = source;
                }
            }

            _pending.Should().NotBeNull();
            EnableEvents(_pending!, EventLevel.Informational, (EventKeywords)0x3); // TaskTransfer | Tasks
        }

        protected override void OnEventWritten(EventWrittenEventArgs eventData)
        {
            if (_onQueued is null || eventData.EventName != "TaskScheduled" || Environment.CurrentManagedThreadId != _threadId
                || eventData.Payload is not { Count: > 0 } payload || (int)payload[0]! != _schedulerId)
            {
                return;
            }

            _onQueued();
        }
    }
}
