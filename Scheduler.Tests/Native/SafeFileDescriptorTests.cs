using Scheduler.Native;

namespace Scheduler.Tests.Native;

/// <summary>The descriptor handle every socket, epoll instance and eventfd is held by.</summary>
public sealed class SafeFileDescriptorTests
{
    [Fact]
    public void A_handle_without_a_descriptor_is_invalid_and_closes_nothing()
    {
        // -1 is "no descriptor". Taken for a valid one, disposing an empty handle would close whatever descriptor its
        // stand-in value names (fd 1 is the process's standard output).
        using var empty = new SafeFileDescriptor();
        empty.IsInvalid.Should().BeTrue();
        empty.Fd.Should().Be(-1);

        using var stdout = new SafeFileDescriptor(1);
        stdout.IsInvalid.Should().BeFalse();
        stdout.SetHandleAsInvalid(); // never close the test host's standard output
    }

}
