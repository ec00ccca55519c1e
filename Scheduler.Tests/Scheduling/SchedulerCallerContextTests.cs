using Scheduler.IO;
using Scheduler.Tests.IO;

namespace Scheduler.Tests.Scheduling;

/// <summary>
/// The scheduler's entry points called from inside a task of another <see cref="TaskScheduler"/> whose threads are all
/// busy, or under a blocked single-threaded <see cref="SynchronizationContext"/>: work meant for our scheduler must go
/// there explicitly, never to <see cref="TaskScheduler.Current"/> or the caller's context, where it would never run.
/// </summary>
public sealed class SchedulerCallerContextTests
{
    private static readonly TimeSpan Bound = TimeSpan.FromSeconds(10);

    [Fact]
    public async Task Factory_PipeScheduler_and_DisposeAsync_called_from_a_foreign_schedulers_task_and_a_blocked_context_use_neither()
    {
        var scheduler = new WorkStealingTaskScheduler(2);
        var foreign = new BlockedTaskScheduler();
        var context = new BlockedSynchronizationContext();
        Task<bool>? started = null;
        Task<bool>? continued = null;
        var scheduled = new TaskCompletionSource<bool>(TaskCreationOptions.RunContinuationsAsynchronously);
        foreign.RunHere(() => context.Run(() =>
        {
            started = scheduler.Factory.StartNew(() => scheduler.IsWorkerThread);
            continued = started.ContinueWith(_ => scheduler.IsWorkerThread, scheduler);
            scheduler.PipeScheduler.Schedule(_ => scheduled.TrySetResult(scheduler.IsWorkerThread), null);
        }));

        (await started!.WithTimeout("Factory.StartNew", Bound)).Should().BeTrue();
        (await continued!.WithTimeout("ContinueWith(..., scheduler)", Bound)).Should().BeTrue();
        (await scheduled.Task.WithTimeout("PipeScheduler.Schedule", Bound)).Should().BeTrue();

        Task? disposal = null;
        foreign.RunHere(() => context.Run(() => disposal = DisposeWithoutContextAsync(scheduler)));
        await disposal!.WithTimeout("the scheduler's DisposeAsync", Bound);
        foreign.Queued.Should().Be(0);
        context.Posts.Should().Be(0);
    }

    [Fact]
    public async Task ReactorConnection_Create_from_a_foreign_schedulers_task_starts_its_loops_on_the_reactor()
    {
        await using var io = new IoTestContext();
        using ReactorSocket listener = io.Listen();
        (ReactorSocket client, ReactorSocket server) = await io.ConnectPairOnSchedulerAsync(listener);
        using (client)
        {
            var foreign = new BlockedTaskScheduler();
            var context = new BlockedSynchronizationContext();
            ReactorConnection? connection = null;
            foreign.RunHere(() => context.Run(() => connection = ReactorConnection.Create(server)));
            await io.Run(async () => await client.SendAsync(new byte[] { 5 }));
            System.IO.Pipelines.ReadResult read = await connection!.Input.ReadAsync().AsTask().WithTimeout("the receive loop", Bound);
            read.Buffer.Length.Should().Be(1);
            connection.Input.AdvanceTo(read.Buffer.End);
            await connection.DisposeAsync().AsTask().WithTimeout("the connection's DisposeAsync", Bound);
            foreign.Queued.Should().Be(0);
            context.Posts.Should().Be(0);
        }
    }

    private static async Task DisposeWithoutContextAsync(WorkStealingTaskScheduler scheduler) =>
        await scheduler.DisposeAsync().ConfigureAwait(false);
}
