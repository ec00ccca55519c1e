using Scheduler.Benchmarks.IO;

namespace Scheduler.Tests.Compare;

/// <summary>The option parsing of the <c>echo-bench</c> and <c>echo-server</c> commands: bad input is a clear message, never a stack trace.</summary>
public sealed class CommandLineTests
{
    [Fact]
    public void Echo_bench_parses_every_option()
    {
        EchoBenchOptions options = EchoBenchOptions.Parse(
            ["echo-bench", "--seconds", "0.5", "--stacks", "Reactor,sockets", "--connections", "1,256", "--sizes", "64", "--timeouts", "reactorwheel"]);

        options.Seconds.Should().Be(0.5);
        options.Stacks.Should().Equal(EchoTransport.Reactor, EchoTransport.Sockets);
        options.Connections.Should().Equal(1, 256);
        options.Sizes.Should().Equal(64);
        options.Timeouts.Should().Be(EchoTimeouts.ReactorWheel);
    }

    [Fact]
    public void Echo_bench_defaults_to_the_full_matrix()
    {
        EchoBenchOptions options = EchoBenchOptions.Parse([]);

        options.Stacks.Should().HaveCount(4);
        options.Connections.Should().Equal(1, 16, 256);
        options.Sizes.Should().Equal(64, 16 * 1024);
        options.Timeouts.Should().Be(EchoTimeouts.None);
    }

    [Theory]
    [InlineData("--stacks pipes", "unknown value 'pipes'. Known: reactor, reactorpipes, sockets, pipelinessocketsunofficial")]
    [InlineData("--stacks 1", "unknown value '1'")]
    [InlineData("--timeouts sometimes", "unknown value 'sometimes'. Known: none, system, reactorwheel, dedicatedwheel")]
    [InlineData("--connections 0", "--connections takes an integer of at least 1, not '0'")]
    [InlineData("--connections 1,x", "--connections takes an integer of at least 1, not 'x'")]
    [InlineData("--sizes ,", "--sizes needs at least one value")]
    [InlineData("--seconds -1", "--seconds takes a positive number, not '-1'")]
    [InlineData("--seconds", "--seconds needs a value")]
    [InlineData("--seconds --sizes 64", "--seconds needs a value")]
    [InlineData("--warmup 3", "Unknown option '--warmup'")]
    public void Echo_bench_refuses_bad_input_with_a_message_and_the_usage(string commandLine, string expected)
    {
        Action parse = () => EchoBenchOptions.Parse(commandLine.Split(' '));

        parse.Should().Throw<ArgumentException>().WithMessage($"*{expected}*").WithMessage($"*{EchoBenchOptions.Usage}*");
    }

    [Fact]
    public async Task Echo_bench_reports_bad_input_on_stderr_and_exits_with_code_2()
    {
        TextWriter original = Console.Error;
        var error = new StringWriter();
        Console.SetError(error);
        int exitCode;
        try
        {
            exitCode = await EchoBenchCommand.RunAsync(["--stacks", "pipes"]);
        }
        finally
        {
            Console.SetError(original);
        }

        exitCode.Should().Be(2);
        error.ToString().Should().Contain("echo-bench: --stacks: unknown value 'pipes'"); // and no exception escaped
    }

    [Fact]
    public void Echo_server_parses_every_option()
    {
        EchoServerOptions options = EchoServerOptions.Parse(["echo-server", "--port", "0", "--workers", "3", "--unix", "/tmp/echo.sock"]);

        options.Port.Should().Be(0);
        options.Workers.Should().Be(3);
        options.UnixPath.Should().Be("/tmp/echo.sock");
        EchoServerOptions.Parse([]).Should().Be(new EchoServerOptions { Port = 5000, Workers = Environment.ProcessorCount });
    }

    [Theory]
    [InlineData("--port 70000", "--port takes a port from 0 to 65535, not '70000'")]
    [InlineData("--port -1", "--port takes an integer of at least 0, not '-1'")]
    [InlineData("--workers 0", "--workers takes an integer of at least 1, not '0'")]
    [InlineData("--workers", "--workers needs a value")]
    [InlineData("--verbose", "Unknown option '--verbose'")]
    public void Echo_server_refuses_bad_input_with_a_message_and_the_usage(string commandLine, string expected)
    {
        Action parse = () => EchoServerOptions.Parse(commandLine.Split(' '));

        parse.Should().Throw<ArgumentException>().WithMessage($"*{expected}*").WithMessage($"*{EchoServerOptions.Usage}*");
    }
}
