namespace Scheduler.IO;

/// <summary>Readiness reported by a backend for one registration.</summary>
/// <param name="Token">The registration's token.</param>
/// <param name="Readable">Read readiness (or a condition a receive must observe: end of stream, an error).</param>
/// <param name="Writable">Write readiness (or an error a send must observe).</param>
/// <param name="Exceptional">
/// A hang-up, an error, the peer's shutdown or urgent (out-of-band) data: conditions that a short read does not
/// reveal, so after one of them a receive that came back short no longer proves the socket drained (see
/// <see cref="ReactorSocket"/>'s receive path).
/// </param>
internal readonly record struct ReadinessEvent(ulong Token, bool Readable, bool Writable, bool Exceptional = false);

/// <summary>
/// The OS-specific half of <see cref="IoReactor"/>: edge-triggered readiness for registered file descriptors.
/// epoll implements it on Linux; a kqueue backend (<c>EV_CLEAR</c> filters for read and write, a user event for
/// <see cref="Wake"/>) would slot in here for macOS/BSD without touching sockets or operations.
/// </summary>
internal interface IReactorBackend : IDisposable
{
    /// <summary>Registers <paramref name="fd"/> once for edge-triggered read, write and hang-up readiness, tagged with <paramref name="token"/>.</summary>
    void Register(int fd, ulong token);

    /// <summary>
    /// Reports <paramref name="fd"/>'s current readiness once more, as a new edge tagged with <paramref name="token"/>,
    /// when it is ready at all (epoll: <c>EPOLL_CTL_MOD</c>; a kqueue backend would trigger a user event carrying the
    /// token). Any thread; best effort: an fd no longer registered is ignored.
    /// </summary>
    void Rearm(int fd, ulong token);

    /// <summary>Removes <paramref name="fd"/> (best effort: closing the fd removes it as well).</summary>
    void Unregister(int fd);

    /// <summary>
    /// Blocks until at least one event, a <see cref="Wake"/>, or <paramref name="timeoutNanoseconds"/> (-1: no limit;
    /// never shorter than asked, unless a signal interrupts it), fills <paramref name="events"/>, returns the count (0 on
    /// timeout or interruption: the caller recomputes its timeout and waits again).
    /// </summary>
    int Wait(Span<ReadinessEvent> events, long timeoutNanoseconds);

    /// <summary>
    /// Makes a blocked <see cref="Wait"/> return (shutdown, an earlier timer); callable from any thread, also after
    /// disposal (then it does nothing). A wake-up that comes before the wait is not lost: that wait returns at once.
    /// </summary>
    void Wake();
}
