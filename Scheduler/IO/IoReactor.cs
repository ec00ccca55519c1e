using System.Diagnostics;
using System.IO.Pipelines;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using Scheduler.Native;
using Scheduler.Sources;
using Scheduler.Timers;

namespace Scheduler.IO;

/// <summary>
/// An I/O reactor: one thread waiting on epoll for readiness of every socket created on it, completing the
/// pending socket operations so their continuations resume on the <see cref="WorkStealingTaskScheduler"/>
/// worker that awaited them. The reactor thread never runs user code.
/// </summary>
/// <remarks>
/// Create one per process (or per scheduler) and create sockets with <see cref="ReactorSocket.Listen"/> and
/// <see cref="ReactorSocket.ConnectAsync"/>. Idle sockets cost no CPU: the thread blocks in
/// <c>epoll_wait</c> until the kernel reports an edge. See <c>docs/io.md</c>.
/// </remarks>
public sealed partial class IoReactor : IDisposable
{
    private readonly IReactorBackend _backend;
    private readonly Thread _thread;
    private int _disposed;
    private int _disposeCalled;
    private PipeOptions? _defaultPipeOptions;
    private Exception? _fatalError;

    // The wheel this reactor's thread drives (see Timers), created on first use.
    private TimerWheel? _timers;

    /// <summary>Creates a reactor whose completions resume on <paramref name="scheduler"/>, and starts its thread.</summary>
    /// <exception cref="ArgumentNullException"><paramref name="scheduler"/> is null.</exception>
    /// <exception cref="PlatformNotSupportedException">The OS has no supported readiness backend (<see cref="IsSupported"/> is false).</exception>
    public IoReactor(WorkStealingTaskScheduler scheduler)
    {
        ArgumentNullException.ThrowIfNull(scheduler);
        if (!IsSupported)
        {
            throw new PlatformNotSupportedException(
                $"IoReactor needs Linux epoll; this platform ({RuntimeInformation.OSDescription}, {RuntimeInformation.RuntimeIdentifier}) is not supported yet.");
        }

        Scheduler = scheduler;
        _backend = CreateBackend();
        try
        {
            _thread = new Thread(static s => ((IoReactor)s!).Run())
            {
                IsBackground = true,
                Name = "IoReactor",
            };
            FaultInjection.ThrowIfOutOfMemoryInjected("pthread_create");

            _thread.UnsafeStart(this);
        }
        catch
        {
            // The OS refuses threads under a pids limit (a container's cgroup, RLIMIT_NPROC): a caller that retries
            // must not leak an epoll instance and an eventfd each time. Nobody can dispose a reactor whose
            // constructor threw.
            _backend.Dispose();
            throw;
        }
    }

    /// <summary>True where a backend exists (Linux, through epoll).</summary>
    public static bool IsSupported => OperatingSystem.IsLinux();

    /// <summary>The scheduler that continuations of this reactor's socket operations resume on when awaited there.</summary>
    public WorkStealingTaskScheduler Scheduler { get; }

    /// <summary>Pipe options used by <see cref="ReactorConnection"/> when none are given: callbacks on <see cref="Scheduler"/>.</summary>
    internal PipeOptions DefaultPipeOptions => _defaultPipeOptions ??= new PipeOptions(
        readerScheduler: Scheduler.PipeScheduler,
        writerScheduler: Scheduler.PipeScheduler,
        useSynchronizationContext: false);

    /// <summary>
    /// A timer wheel (1 ms tick) driven by this reactor's thread instead of a thread of its own: the reactor's
    /// <c>epoll_wait</c> sleeps no longer than the next timer deadline, and fires due timers between batches of
    /// readiness events. Use it for the timeouts of the sockets' operations (<c>new CancellationTokenSource(timeout,
    /// reactor.Timers)</c>, <see cref="TimerWheel.DelayAsync"/>, <see cref="TimerWheel.CreateTimer"/>): timers cost
    /// no extra thread and no extra wake-ups while the reactor is busy anyway. As with the reactor itself, no user
    /// code runs on its thread (<see cref="TimerWheel.CreateTimer"/> callbacks run on the ThreadPool, delays resume
    /// on the awaiting worker).
    /// </summary>
    /// <remarks>
    /// Created on first use (a reactor that never uses timers pays nothing) and disposed with the reactor: pending
    /// delays then complete with <see cref="ObjectDisposedException"/>. Disposing the wheel yourself stops it the same
    /// way and leaves the reactor's sockets running.
    /// </remarks>
    /// <exception cref="ObjectDisposedException">The reactor is disposed.</exception>
    public TimerWheel Timers
    {
        get
        {
            ThrowIfDisposed();
            return Volatile.Read(ref _timers) ?? CreateTimers();
        }
    }

    internal bool IsDisposed => Volatile.Read(ref _disposed) != 0;

    /// <summary>The failure of epoll that stopped this reactor (see <see cref="Run"/>), or null.</summary>
    internal Exception? FatalError => Volatile.Read(ref _fatalError);

    /// <summary>The managed id of the reactor's thread. For tests, which fail its system calls by thread.</summary>
    internal int ThreadIdForTests => _thread.ManagedThreadId;

    /// <summary>How many readiness events one wait hands to <see cref="Dispatch"/> at most.</summary>
    internal const int EventBatchCapacity = 256;

    /// <summary>Tests only: whether the reactor's thread is a background thread (a reactor never disposed must not keep the process alive).</summary>
    internal bool IsThreadBackgroundForTests => _thread.IsBackground;

    /// <summary>
    /// Stops the reactor thread and joins it, then disposes every socket still registered: their pending
    /// operations fail with <see cref="ObjectDisposedException"/>. Idempotent.
    /// </summary>
    /// <remarks>
    /// Afterwards <see cref="Timers"/>, and creating sockets on this reactor, throw <see cref="ObjectDisposedException"/>;
    /// <see cref="Scheduler"/> stays readable.
    /// </remarks>
    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposeCalled, 1) != 0)
        {
            return;
        }

        // A full fence between publishing the flag and reading _timers below (CreateTimers does the mirror image).
        Interlocked.Exchange(ref _disposed, 1);
        _backend.Wake();
        if (Thread.CurrentThread != _thread)
        {
            _thread.Join();
        }

        // The thread that drove the wheel is gone: complete its pending delays with ObjectDisposedException.
        Volatile.Read(ref _timers)?.Dispose();
        foreach (ReactorSocket socket in DetachAll())
        {
            socket.Dispose();
        }

        _backend.Dispose();
    }

    private TimerWheel CreateTimers()
    {
        var created = new TimerWheel(TimeSpan.FromMilliseconds(1), _backend.Wake);
        TimerWheel timers = Interlocked.CompareExchange(ref _timers, created, null) ?? created;
        if (timers != created)
        {
            created.Dispose(); // lost the race: never seen by anyone
        }

        if (IsDisposed)
        {
            // Dispose may have read _timers before our exchange: make sure the wheel does not outlive the reactor.
            timers.Dispose();
            ThrowIfDisposed();
        }

        return timers;
    }

    // The one place a platform picks its backend (kqueue would be chosen here on macOS/BSD).
#pragma warning disable CA1859 // The interface is the backend seam; a kqueue backend would be returned here too.
    private static IReactorBackend CreateBackend() => new EpollBackend();
#pragma warning restore CA1859

    internal void ThrowIfDisposed()
    {
        if (IsDisposed)
        {
            throw FatalError is { } fatal
                ? new ObjectDisposedException(GetType().FullName, $"The reactor stopped after an epoll failure: {fatal.Message}")
                : new ObjectDisposedException(GetType().FullName);
        }
    }

    private void Run()
    {
        // Completions made here reach a SynchronizationContext or a foreign TaskScheduler through the ThreadPool:
        // their Post/QueueTask is user code, which may run the continuation inline or block every other socket.
        WakerDispatch.MarkCurrentThreadRunsNoUserCode();
        DefaultExecutionContext.LearnOnFreshThread(); // for the timers of its wheel (IoReactor.Timers)
        try
        {
            RunLoop();
        }
        catch (Exception e) when (!IsDisposed)
        {
            // epoll itself failed (it should not): no socket can make progress any more. Fail every socket's
            // operations instead of crashing the process from a background thread, and refuse new sockets.
            // Published before the sockets are disposed: their operations' errors name the failure (CreateDisposedException).
            Volatile.Write(ref _fatalError, e);
            Interlocked.Exchange(ref _disposed, 1);
            Volatile.Read(ref _timers)?.Dispose();
            foreach (ReactorSocket socket in DetachAll())
            {
                socket.Dispose();
            }
        }
    }

    private void RunLoop()
    {
        var events = new ReadinessEvent[EventBatchCapacity];
        while (!IsDisposed)
        {
            int count = _backend.Wait(events, RunTimers());
            Dispatch(events, count);
        }
    }

    /// <summary>
    /// Hands each readiness event to its socket. A frame of its own, left before the next wait: the reactor's thread
    /// runs <see cref="RunLoop"/> once, for its whole life, in tier-0 or on-stack-replaced code whose stack slots the GC
    /// sees for the whole method. A socket variable there kept the last socket an event went to alive, closed or not,
    /// for as long as the reactor then waited (<c>ReactorRetentionTests</c>). Internal for a test that hands it a full
    /// batch, which a live reactor's wait returns only under a burst no test can arrange.
    /// </summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    internal void Dispatch(ReadinessEvent[] events, int count)
    {
        ReactorSocket?[] slots = Volatile.Read(ref _slots);
        for (int i = 0; i < count; i++)
        {
            ReadinessEvent ev = events[i];
            if (ev.Token == EpollBackend.WakeToken)
            {
                continue;
            }

            int index = (int)(uint)ev.Token;
            if ((uint)index >= (uint)slots.Length)
            {
                slots = Volatile.Read(ref _slots);
                if ((uint)index >= (uint)slots.Length)
                {
                    continue;
                }
            }

            // The generation in the token must match: an event queued for a closed socket whose slot (or fd
            // number) was reused since can never reach the new socket's operations.
            ReactorSocket? socket = Volatile.Read(ref slots[index]);
            if (socket is not null && socket.RegistrationToken == ev.Token)
            {
                socket.OnReadiness(ev.Readable, ev.Writable, ev.Exceptional);
            }
        }
    }

    /// <summary>
    /// Drives the wheel, if there is one, before each wait: fires what is due and returns how long the wait may last
    /// (in nanoseconds; -1 for no limit).
    /// </summary>
    private long RunTimers()
    {
        TimerWheel? timers = Volatile.Read(ref _timers);
        if (timers is null)
        {
            return -1;
        }

        long plan = timers.RunHostedDriverStep(out long now);
        return plan == long.MaxValue ? -1 : TimestampUnitsToNanoseconds(plan - now);
    }

    private static long TimestampUnitsToNanoseconds(long units) =>
        Stopwatch.Frequency == 1_000_000_000 ? units : (long)Math.Ceiling(units * (1e9 / Stopwatch.Frequency));
}
