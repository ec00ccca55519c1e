using Scheduler.IO;

namespace Scheduler.Tests.IO;

/// <summary>
/// The reactor's registration table: a disposed socket's slot goes back to the table for the next socket (so a server
/// that churns connections keeps a table as large as its peak, not as its history), and every reuse bumps the slot's
/// generation, so that the new socket's token differs from every earlier token of that slot (an event harvested for
/// the closed socket can never reach the new one).
/// </summary>
public sealed class RegistrationTableTests
{
    [Fact]
    public async Task Slots_of_disposed_sockets_are_reused_each_time_with_a_new_token()
    {
        await using var io = new IoTestContext();
        using ReactorSocket listener = io.Listen();
        var tokensBySlot = new Dictionary<int, HashSet<ulong>>();
        int highestSlot = 0;
        void Record(ReactorSocket socket)
        {
            int slot = socket.RegistrationSlot;
            ((int)(uint)socket.RegistrationToken).Should().Be(slot, "the token's low 32 bits name the slot");
            if (!tokensBySlot.TryGetValue(slot, out HashSet<ulong>? tokens))
            {
                tokensBySlot[slot] = tokens = [];
            }

            tokens.Add(socket.RegistrationToken).Should().BeTrue("each socket in a slot gets a token that slot never had");
        }

        async Task Churn(int pairs)
        {
            for (int i = 0; i < pairs; i++)
            {
                (ReactorSocket client, ReactorSocket server) = await io.ConnectPairOnSchedulerAsync(listener);
                Record(client);
                Record(server);
                highestSlot = Math.Max(highestSlot, Math.Max(client.RegistrationSlot, server.RegistrationSlot));
                client.Dispose();
                server.Dispose();
            }
        }

        await Churn(200);
        highestSlot.Should().BeLessThan(8, "at most three sockets were registered at a time, so freed slots must be reused");

        // Then 80 pairs at once, past the table's first 64 slots: it grows, and the slots churned above keep their
        // generations through the growth (session 48's Stryker run: with the copy of the generations skipped, each old
        // slot started again at its first token).
        var held = new List<ReactorSocket>();
        for (int i = 0; i < 80; i++)
        {
            (ReactorSocket client, ReactorSocket server) = await io.ConnectPairOnSchedulerAsync(listener);
            Record(client);
            Record(server);
            held.Add(client);
            held.Add(server);
        }

        held.Max(s => s.RegistrationSlot).Should().BeGreaterThanOrEqualTo(64, "the table grew");
        foreach (ReactorSocket socket in held.OrderByDescending(s => s.RegistrationSlot))
        {
            socket.Dispose(); // the lowest slots last: freed slots are reused last-in first-out, so the churn takes those
        }

        await Churn(50);

        io.Reactor.RegisteredCount.Should().Be(1, "only the listener is left");
    }
}
