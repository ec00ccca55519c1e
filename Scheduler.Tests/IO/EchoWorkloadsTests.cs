using Scheduler.Benchmarks.IO;

namespace Scheduler.Tests.IO;

/// <summary>The echo workload behind <c>echo-bench</c> and the compare command's echo rows, run small.</summary>
[Collection(nameof(IoStressGroup))]
public sealed class EchoWorkloadsTests
{
    [Theory]
    [InlineData(EchoTransport.Reactor, EchoTimeouts.None)]
    [InlineData(EchoTransport.Reactor, EchoTimeouts.ReactorWheel)]
    [InlineData(EchoTransport.Reactor, EchoTimeouts.DedicatedWheel)]
    [InlineData(EchoTransport.ReactorPipes, EchoTimeouts.None)]
    [InlineData(EchoTransport.Sockets, EchoTimeouts.None)]
    [InlineData(EchoTransport.Sockets, EchoTimeouts.System)]
    public async Task Every_stack_and_timeout_flavour_echoes_and_reports_latency(EchoTransport stack, EchoTimeouts timeouts)
    {
        // Only messages echoed within the 200-ms window count, and a loaded run can hold the echo's threads off their
        // cores for all of it (a CI run measured 3.45 s for a step that takes milliseconds): a run that counted none runs
        // again, up to 5 times. A stack that does not echo counts none in any.
        EchoResult result = await EchoWorkloads.RunAsync(stack, connections: 4, messageSize: 64, TimeSpan.FromMilliseconds(200), TimeSpan.FromMilliseconds(50), timeouts)
            .WaitAsync(IoTestContext.Timeout);
        for (int run = 1; run < 5 && result.Messages == 0; run++)
        {
            result = await EchoWorkloads.RunAsync(stack, connections: 4, messageSize: 64, TimeSpan.FromMilliseconds(200), TimeSpan.FromMilliseconds(50), timeouts)
                .WaitAsync(IoTestContext.Timeout);
        }

        result.Messages.Should().BePositive();
        result.MessagesPerSecond.Should().BePositive();
        result.P99Microseconds.Should().BeGreaterThanOrEqualTo(result.P50Microseconds);
    }

    [Theory]
    [InlineData(EchoTransport.Sockets, EchoTimeouts.ReactorWheel)]
    [InlineData(EchoTransport.Reactor, EchoTimeouts.System)]
    [InlineData(EchoTransport.ReactorPipes, EchoTimeouts.ReactorWheel)]
    [InlineData(EchoTransport.PipelinesSocketsUnofficial, EchoTimeouts.System)]
    public async Task A_timeout_flavour_the_stack_cannot_use_is_refused(EchoTransport stack, EchoTimeouts timeouts)
    {
        Func<Task> run = () => EchoWorkloads.RunAsync(stack, 1, 64, TimeSpan.FromMilliseconds(10), TimeSpan.Zero, timeouts);
        (await run.Should().ThrowAsync<ArgumentException>()).Which.ParamName.Should().Be("timeouts");
    }
}
