namespace Scheduler.IO;

public sealed partial class IoReactor
{
    private readonly Lock _registrationLock = new();
    private readonly Stack<int> _freeSlots = new(64); // as long as the table (see GrowTable)
    private ReactorSocket?[] _slots = new ReactorSocket?[64];
    private uint[] _generations = new uint[64];
    private int _nextSlot;
    private int _registeredCount;

    /// <summary>Number of sockets currently registered (tests use it to check that nothing leaks).</summary>
    internal int RegisteredCount => Volatile.Read(ref _registeredCount);

    /// <summary>
    /// Gives <paramref name="socket"/> a slot and a token (slot index in the low 32 bits, the slot's generation in
    /// the high 32 bits) and registers its fd once, edge-triggered for both directions.
    /// </summary>
    internal void Register(ReactorSocket socket, int fd)
    {
        lock (_registrationLock)
        {
            ThrowIfDisposed();
            int index;
            if (!_freeSlots.TryPop(out index))
            {
                index = _nextSlot;
                if (index == _slots.Length)
                {
                    GrowTable();
                }

                _nextSlot = index + 1; // only once the slot exists: a growth that failed is simply tried again
            }

            uint generation = _generations[index];
            ulong token = ((ulong)generation << 32) | (uint)index;
            socket.RegistrationToken = token;
            socket.RegistrationSlot = index;
            Volatile.Write(ref _slots[index], socket);
            _registeredCount++;
            try
            {
                _backend.Register(fd, token);
            }
            catch
            {
                ReleaseSlot(index);
                throw;
            }
        }
    }

    /// <summary>
    /// Has the backend report <paramref name="socket"/>'s current readiness again, as a new edge (for a receive that
    /// parked with no edge to come; see <see cref="ReactorSocket.EndSendAttempt"/>). Any thread; the caller holds a
    /// reference on <paramref name="fd"/>. Nothing to do once the socket or the reactor is disposed: their disposal
    /// fails the parked operations.
    /// </summary>
    internal void ReportReadinessAgain(ReactorSocket socket, int fd)
    {
        if (!IsDisposed && !socket.IsDisposed)
        {
            _backend.Rearm(fd, socket.RegistrationToken);
        }
    }

    /// <summary>Frees the socket's slot and bumps its generation so in-flight events for it are dropped.</summary>
    internal void Unregister(ReactorSocket socket)
    {
        lock (_registrationLock)
        {
            int index = socket.RegistrationSlot;
            if (index < 0 || !ReferenceEquals(_slots[index], socket))
            {
                return;
            }

            ReleaseSlot(index);
        }
    }

    /// <summary>
    /// Doubles the table. Everything is allocated before anything changes: out of memory here fails one registration
    /// and leaves the table as it was. The free-slot stack grows with it, so that releasing a slot (in a socket's
    /// Dispose, which must not fail) never allocates.
    /// </summary>
    private void GrowTable()
    {
        Native.FaultInjection.ThrowIfOutOfMemoryInjected("registration-table");

        int length = _slots.Length * 2;
        var generations = new uint[length];
        var slots = new ReactorSocket?[length];
        _freeSlots.EnsureCapacity(length);
        Array.Copy(_generations, generations, _generations.Length);
        Array.Copy(_slots, slots, _slots.Length);
        _generations = generations;
        Volatile.Write(ref _slots, slots);
    }

    private void ReleaseSlot(int index)
    {
        Volatile.Write(ref _slots[index], null);
        // Skip 0xFFFFFFFF so a token can never equal the backend's wake token.
        _generations[index] = _generations[index] == 0xFFFFFFFEu ? 0 : _generations[index] + 1;
        _freeSlots.Push(index);
        _registeredCount--;
    }

    private List<ReactorSocket> DetachAll()
    {
        lock (_registrationLock)
        {
            var sockets = new List<ReactorSocket>(_registeredCount);
            foreach (ReactorSocket? socket in _slots)
            {
                if (socket is not null)
                {
                    sockets.Add(socket);
                }
            }

            return sockets;
        }
    }
}
