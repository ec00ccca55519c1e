using Scheduler.IO;

namespace Scheduler.Tests.IO;

/// <summary>
/// The reactor thread never runs user code: not a continuation, and not the Post or QueueTask of a context the awaiter
/// captured either (either may run the continuation inline, or block, which would stall every socket).
/// </summary>
public sealed class ReactorThreadUserCodeTests
{
    [Fact]
    public async Task A_TaskScheduler_that_runs_queued_tasks_inline_never_gets_a_continuation_onto_the_reactor_thread()
    {
        await using var io = new IoTestContext();
        using ReactorSocket listener = io.Listen();
        (ReactorSocket client, ReactorSocket server) = await io.ConnectPairOnSchedulerAsync(listener);
        using (client)
        using (server)
        {
            var inline = new InlineTaskScheduler();
            Task<(string? AfterReceive, string? AfterDelay)> awaiter = Task.Factory.StartNew(
                async () =>
                {
                    await server.ReceiveAsync(new byte[4]);
                    string? afterReceive = Thread.CurrentThread.Name;

                    // reactor.Timers delays complete on the reactor thread too.
                    await io.Reactor.Timers.DelayAsync(TimeSpan.FromMilliseconds(5));
                    return (afterReceive, Thread.CurrentThread.Name);
                },
                CancellationToken.None,
                TaskCreationOptions.DenyChildAttach,
                inline).Unwrap();

            await client.SendAsync(new byte[] { 1 });
            (string? afterReceive, string? afterDelay) = await awaiter.WaitAsync(IoTestContext.Timeout);
            afterReceive.Should().NotBe("IoReactor", "the scheduler's QueueTask is user code, here running the continuation inline");
            afterDelay.Should().NotBe("IoReactor");
        }
    }

    [Fact]
    public async Task A_SynchronizationContext_whose_Post_blocks_stalls_no_other_socket()
    {
        await using var io = new IoTestContext();
        using ReactorSocket listener = io.Listen();
        (ReactorSocket client, ReactorSocket server) = await io.ConnectPairOnSchedulerAsync(listener);
        (ReactorSocket otherClient, ReactorSocket otherServer) = await io.ConnectPairOnSchedulerAsync(listener);
        using var context = new BlockingContext();
        using (client)
        using (server)
        using (otherClient)
        using (otherServer)
        {
            // Awaited by hand under the context, as an awaiter on it would (OnCompleted, then the result once resumed).
#pragma warning disable CA2012
            ValueTask<int> receive = server.ReceiveAsync(new byte[8]);
#pragma warning restore CA2012
            receive.IsCompleted.Should().BeFalse();
            using var resumed = new ManualResetEventSlim();
            SynchronizationContext? previous = SynchronizationContext.Current;
            SynchronizationContext.SetSynchronizationContext(context);
            try
            {
                receive.GetAwaiter().OnCompleted(resumed.Set);
            }
            finally
            {
                SynchronizationContext.SetSynchronizationContext(previous);
            }

            try
            {
                await client.SendAsync(new byte[] { 1 });
                context.Entered.Wait(IoTestContext.Timeout).Should().BeTrue("the completion is posted to the context");
                context.PostThread.Should().NotBe("IoReactor");

                // While that Post blocks, the reactor still serves every other socket.
                await io.Run(async () =>
                {
                    await otherClient.SendAsync(new byte[] { 2 });
                    var buffer = new byte[1];
                    await IoTestContext.ReceiveExactlyAsync(otherServer, buffer);
                    buffer[0].Should().Be(2);
                });
            }
            finally
            {
                context.Release.Set();
            }

            resumed.Wait(IoTestContext.Timeout).Should().BeTrue();
            (await receive).Should().Be(1);
        }
    }


    /// <summary>A context whose Post blocks until released (a bounded message loop that is full), then runs the callback.</summary>
    private sealed class BlockingContext : SynchronizationContext, IDisposable
    {
        public ManualResetEventSlim Entered { get; } = new();

        public ManualResetEventSlim Release { get; } = new();

        public string? PostThread { get; private set; }

        public override void Post(SendOrPostCallback d, object? state)
        {
            PostThread = Thread.CurrentThread.Name;
            Entered.Set();
            Release.Wait(IoTestContext.Timeout);
            ThreadPool.UnsafeQueueUserWorkItem(s => d(s), state, preferLocal: false);
        }

        public void Dispose()
        {
            Release.Set();
            Entered.Dispose();
            Release.Dispose();
        }
    }
}
