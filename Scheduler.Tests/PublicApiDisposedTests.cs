using System.Diagnostics;
using System.IO.Pipelines;
using System.Net;
using System.Net.Sockets;
using System.Reflection;
using System.Text;
using Scheduler.IO;
using Scheduler.Timers;

namespace Scheduler.Tests;

/// <summary>
/// A reflection sweep of what every public instance member of every disposable the library hands out does once that
/// object is disposed: throw <see cref="ObjectDisposedException"/> (synchronously, or through the returned task, as each
/// row records), or keep working where the documentation says so. Never another exception type, a hang, or a returned
/// task that never completes.
/// </summary>
/// <remarks>
/// <para>
/// The model is <see cref="PublicApiArgumentTests"/> (its fixture and per-case context are reused here): nothing is
/// skipped in silence. The disposables are found by reflection (exported types that implement <see cref="IDisposable"/>
/// or <see cref="IAsyncDisposable"/>, and disposable types public members return, such as the <see cref="ITimer"/> of
/// <see cref="TimerWheel.CreateTimer"/>); each needs a <see cref="Subject"/> that makes a disposed one, and each of its
/// members a row in <see cref="s_rows"/> with the sentence of the documentation it rests on.
/// <see cref="Every_member_of_every_disposable_has_a_row"/> fails by name for whatever lacks either, so a member added
/// later must be classified.
/// </para>
/// <para>
/// Members: public instance methods and property accessors, inherited ones from the BCL base classes included
/// (<see cref="TimeProvider"/>'s clock helpers, <see cref="TaskScheduler.Id"/>; <see cref="object"/>'s are left out),
/// and explicit interface implementations; for an object handed out as an interface, that interface's members and its
/// base interfaces'. A type with both <c>Dispose</c> and <c>DisposeAsync</c> is swept after each.
/// </para>
/// <para>
/// How the library reports a disposal to an asynchronous member, as found (and pinned by the rows): the socket
/// operations (<see cref="ReactorSocket.AcceptAsync"/>, <see cref="ReactorSocket.ReceiveAsync"/>,
/// <see cref="ReactorSocket.SendAsync(ReadOnlyMemory{byte}, CancellationToken)"/>) return a faulted task, as they report
/// every other error; <see cref="TimerWheel.DelayAsync"/> throws at the call, as it validates its argument. Each type is
/// consistent within itself.
/// </para>
/// </remarks>
public sealed class PublicApiDisposedTests(PublicApiArgumentTests.Resources resources) : IClassFixture<PublicApiArgumentTests.Resources>
{
    /// <summary>The bound on each call and on each task it returns: past it, the call counts as a hang or a lost completion.</summary>
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(10);

    private static readonly Assembly s_library = typeof(WorkStealingTaskScheduler).Assembly;

    /// <summary>A valid argument per parameter type. Time spans are long enough that nothing fires during a case.</summary>
    private static readonly Dictionary<Type, Func<object?>> s_values = new()
    {
        [typeof(TimeSpan)] = () => TimeSpan.FromSeconds(30),
        [typeof(CancellationToken)] = () => CancellationToken.None,
        [typeof(Memory<byte>)] = () => new Memory<byte>(new byte[16]),
        [typeof(ReadOnlyMemory<byte>)] = () => new ReadOnlyMemory<byte>(new byte[16]),
        [typeof(SocketShutdown)] = () => SocketShutdown.Send,
        [typeof(TimerCallback)] = () => (TimerCallback)(_ => { }),
        [typeof(object)] = () => new object(),
        [typeof(long)] = () => Stopwatch.GetTimestamp(),
    };

    /// <summary>
    /// Ways to get a disposed instance of each disposable. <see cref="Subject.Table"/> names the rows that apply: subjects
    /// that differ only in how they were disposed share them.
    /// </summary>
    private static readonly Subject[] s_subjects =
    [
        new("WorkStealingTaskScheduler after Dispose()", "WorkStealingTaskScheduler", typeof(WorkStealingTaskScheduler), c =>
        {
            var scheduler = NewScheduler();
            scheduler.Dispose();
            return Task.FromResult<object>(scheduler);
        }),
        new("WorkStealingTaskScheduler after DisposeAsync()", "WorkStealingTaskScheduler", typeof(WorkStealingTaskScheduler), async c =>
        {
            var scheduler = NewScheduler();
            await scheduler.DisposeAsync();
            return scheduler;
        }),
        new("WorkStealingTaskScheduler after Dispose() on its own worker", "WorkStealingTaskScheduler", typeof(WorkStealingTaskScheduler), async c =>
        {
            // scheduling.md: "On a worker it does not wait (a thread cannot join itself)": the members are then called
            // while the workers may still be winding down, a state of their own.
            var scheduler = NewScheduler();
            c.Own(scheduler);
            await scheduler.Factory.StartNew(scheduler.Dispose).WaitAsync(Timeout);
            return scheduler;
        }),
        new("IoReactor after Dispose()", "IoReactor", typeof(IoReactor), c =>
        {
            var reactor = new IoReactor(c.Resources.Scheduler);
            reactor.Dispose();
            return Task.FromResult<object>(reactor);
        }),
        new("ReactorSocket (connected) after Dispose()", "ReactorSocket", typeof(ReactorSocket), c =>
        {
            ReactorSocket socket = c.Resources.ConnectedSocket(c);
            socket.Dispose();
            return Task.FromResult<object>(socket);
        }),
        new("ReactorSocket (listener) after Dispose()", "ReactorSocket", typeof(ReactorSocket), c =>
        {
            ReactorSocket listener = c.Own(ReactorSocket.Listen(c.Resources.Reactor, new IPEndPoint(IPAddress.Loopback, 0)));
            listener.Dispose();
            return Task.FromResult<object>(listener);
        }),
        new("ReactorSocket (connected) after its reactor's Dispose()", "ReactorSocket", typeof(ReactorSocket), async c =>
        {
            // io.md: the reactor's Dispose "disposes every socket still registered".
            var reactor = c.Own(new IoReactor(c.Resources.Scheduler));
            ReactorSocket listener = c.Own(ReactorSocket.Listen(reactor, new IPEndPoint(IPAddress.Loopback, 0)));
            ReactorSocket client = c.Own(await ReactorSocket.ConnectAsync(reactor, listener.LocalEndPoint!).AsTask().WaitAsync(Timeout));
            reactor.Dispose();
            return client;
        }),
        new("ReactorConnection after DisposeAsync()", "ReactorConnection", typeof(ReactorConnection), async c =>
        {
            ReactorConnection connection = ReactorConnection.Create(c.Resources.ConnectedSocket(c));
            await connection.DisposeAsync().AsTask().WaitAsync(Timeout);
            return connection;
        }),
        new("ReactorConnection after its Socket's Dispose(), then DisposeAsync()", "ReactorConnection", typeof(ReactorConnection), async c =>
        {
            // The socket is public, so a user may close it under the connection: its loops then meet an
            // ObjectDisposedException the connection did not cause, and DisposeAsync must still end.
            ReactorConnection connection = ReactorConnection.Create(c.Resources.ConnectedSocket(c));
            connection.Socket.Dispose();
            await connection.DisposeAsync().AsTask().WaitAsync(Timeout);
            return connection;
        }),
        new("ReactorConnection after its reactor's Dispose(), then DisposeAsync()", "ReactorConnection", typeof(ReactorConnection), async c =>
        {
            // io.md: the reactor's Dispose disposes every socket still registered, the connection's among them.
            var reactor = c.Own(new IoReactor(c.Resources.Scheduler));
            ReactorSocket listener = c.Own(ReactorSocket.Listen(reactor, new IPEndPoint(IPAddress.Loopback, 0)));
            Task<ReactorSocket> accept = listener.AcceptAsync().AsTask();
            ReactorConnection connection = ReactorConnection.Create(
                c.Own(await ReactorSocket.ConnectAsync(reactor, listener.LocalEndPoint!).AsTask().WaitAsync(Timeout)));
            c.Own(await accept.WaitAsync(Timeout));
            reactor.Dispose();
            await connection.DisposeAsync().AsTask().WaitAsync(Timeout);
            return connection;
        }),
        new("TimerWheel after Dispose()", "TimerWheel", typeof(TimerWheel), c =>
        {
            var wheel = new TimerWheel();
            wheel.Dispose();
            return Task.FromResult<object>(wheel);
        }),
        new("TimerWheel (IoReactor.Timers) after its reactor's Dispose()", "TimerWheel", typeof(TimerWheel), c =>
        {
            // timers.md: IoReactor.Dispose "joins the reactor thread and then disposes the wheel".
            var reactor = c.Own(new IoReactor(c.Resources.Scheduler));
            TimerWheel wheel = reactor.Timers;
            reactor.Dispose();
            return Task.FromResult<object>(wheel);
        }),
        new("ITimer after Dispose()", "ITimer (timer disposed)", typeof(ITimer), c =>
        {
            ITimer timer = c.Wheel().CreateTimer(_ => { }, null, TimeSpan.FromSeconds(30), System.Threading.Timeout.InfiniteTimeSpan);
            timer.Dispose();
            return Task.FromResult<object>(timer);
        }),
        new("ITimer after DisposeAsync()", "ITimer (timer disposed)", typeof(ITimer), async c =>
        {
            ITimer timer = c.Wheel().CreateTimer(_ => { }, null, TimeSpan.FromSeconds(30), System.Threading.Timeout.InfiniteTimeSpan);
            await timer.DisposeAsync().AsTask().WaitAsync(Timeout);
            return timer;
        }),
        new("ITimer after its TimerWheel's Dispose()", "ITimer (wheel disposed)", typeof(ITimer), c =>
        {
            TimerWheel wheel = c.Wheel();
            ITimer timer = c.Own(wheel.CreateTimer(_ => { }, null, TimeSpan.FromSeconds(30), System.Threading.Timeout.InfiniteTimeSpan));
            wheel.Dispose();
            return Task.FromResult<object>(timer);
        }),
    ];

    /// <summary>
    /// What each member of each table does after disposal, keyed <c>"table: member"</c>, with the sentence of the
    /// documentation (API.md, docs/*.md or the member's XML documentation) it rests on. A stale key fails the coverage fact.
    /// </summary>
    private static readonly Dictionary<string, Row> s_rows = new()
    {
        // WorkStealingTaskScheduler. scheduling.md (dispose): "Dispose/DisposeAsync stop intake from outside (StartNew then
        // throws TaskSchedulerException wrapping ObjectDisposedException) ... Idempotent."; XML (Dispose): "Afterwards the
        // scheduler stays readable: WorkerCount, MaximumConcurrencyLevel, IsWorkerThread, Factory and PipeScheduler return
        // what they did, and GetStatistics the final counts; a later Dispose or DisposeAsync does nothing more."
        ["WorkStealingTaskScheduler: Dispose()"] = new(Expect.Works, "scheduling.md: Dispose/DisposeAsync ... Idempotent.; XML: a later Dispose or DisposeAsync does nothing more"),
        ["WorkStealingTaskScheduler: DisposeAsync()"] = new(Expect.Works, "scheduling.md: Dispose/DisposeAsync ... Idempotent.; XML: a later Dispose or DisposeAsync does nothing more"),
        ["WorkStealingTaskScheduler: get_Factory()"] = new(
            Expect.Works,
            "API.md: After Dispose, Factory.StartNew throws TaskSchedulerException whose inner exception is ObjectDisposedException.",
            (factory, _) =>
            {
                Action startNew = () => ((TaskFactory)factory!).StartNew(() => { });
                startNew.Should().Throw<TaskSchedulerException>().WithInnerException<ObjectDisposedException>();
                return Task.CompletedTask;
            }),
        ["WorkStealingTaskScheduler: get_PipeScheduler()"] = new(
            Expect.Works,
            "scheduling.md (nothing lost): a continuation, waker or pipe callback that arrives after every worker exited runs on the ThreadPool.",
            async (pipeScheduler, _) =>
            {
                var ran = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
                ((PipeScheduler)pipeScheduler!).Schedule(static s => ((TaskCompletionSource)s!).SetResult(), ran);
                await ran.Task.WaitAsync(Timeout);
            }),
        ["WorkStealingTaskScheduler: get_IsWorkerThread()"] = new(
            Expect.Works,
            "XML (Dispose): IsWorkerThread ... return what they did (false here: no worker is left)",
            (isWorker, _) => Then(() => ((bool)isWorker!).Should().BeFalse())),
        ["WorkStealingTaskScheduler: get_WorkerCount()"] = new(
            Expect.Works,
            "XML (Dispose): WorkerCount ... return what they did",
            (count, _) => Then(() => ((int)count!).Should().Be(1))),
        ["WorkStealingTaskScheduler: get_MaximumConcurrencyLevel()"] = new(
            Expect.Works,
            "XML (Dispose): MaximumConcurrencyLevel ... return what they did",
            (level, _) => Then(() => ((int)level!).Should().Be(1))),
        ["WorkStealingTaskScheduler: GetStatistics()"] = new(
            Expect.Works,
            "XML (Dispose): GetStatistics the final counts (nothing is queued any more)",
            (stats, _) => Then(() => ((SchedulerStatistics)stats!).QueuedTasks.Should().Be(0))),
        ["WorkStealingTaskScheduler: get_Id()"] = new(Expect.Works, "TaskScheduler.Id (BCL, inherited): an identity, valid for the object's lifetime"),

        // IoReactor. io.md (Dispose): "Creating sockets on a disposed reactor throws ObjectDisposedException."
        ["IoReactor: Dispose()"] = new(Expect.Works, "XML (Dispose): Idempotent."),
        ["IoReactor: get_Timers()"] = new(Expect.ThrowsDisposed, "XML (Timers): <exception cref=\"ObjectDisposedException\">The reactor is disposed.</exception>; timers.md: reactor.Timers then throws it"),
        ["IoReactor: get_Scheduler()"] = new(
            Expect.Works,
            "XML (Dispose): Scheduler stays readable",
            (scheduler, _) => Then(() => scheduler.Should().NotBeNull())),

        // ReactorSocket. API.md: "ObjectDisposedException after Dispose (also for operations pending at that moment)";
        // io.md's error table: "Operation after Dispose, or pending when Dispose ran (socket or reactor)".
        ["ReactorSocket: Dispose()"] = new(Expect.Works, "XML (Dispose): Idempotent."),
        ["ReactorSocket: AcceptAsync(CancellationToken)"] = new(Expect.FaultsDisposed, "XML: ObjectDisposedException: The listener was disposed before or during the accept."),
        ["ReactorSocket: ReceiveAsync(Memory<Byte>, CancellationToken)"] = new(Expect.FaultsDisposed, "XML: ObjectDisposedException: The socket was disposed before or during the receive."),
        ["ReactorSocket: SendAsync(ReadOnlyMemory<Byte>, CancellationToken)"] = new(Expect.FaultsDisposed, "XML: ObjectDisposedException: The socket was disposed before or during the send."),
        ["ReactorSocket: Shutdown(SocketShutdown)"] = new(Expect.ThrowsDisposed, "XML (Shutdown): ObjectDisposedException: The socket was disposed."),
        ["ReactorSocket: get_LocalEndPoint()"] = new(
            Expect.Works,
            "XML (LocalEndPoint): Null after disposal even when read before it",
            (endPoint, _) => Then(() => endPoint.Should().BeNull())),
        ["ReactorSocket: get_RemoteEndPoint()"] = new(
            Expect.Works,
            "XML (RemoteEndPoint): null for a listening or disposed socket",
            (endPoint, _) => Then(() => endPoint.Should().BeNull())),

        // ReactorConnection. io.md (DisposeAsync): "After it, Output's GetMemory, GetSpan, WriteAsync and FlushAsync throw
        // ObjectDisposedException."
        ["ReactorConnection: DisposeAsync()"] = new(Expect.Works, "XML (DisposeAsync): Idempotent."),
        ["ReactorConnection: get_Socket()"] = new(
            Expect.Works,
            "XML (DisposeAsync): Socket (disposed), Input and Output stay readable",
            (socket, _) => Then(() => ((ReactorSocket)socket!).LocalEndPoint.Should().BeNull("the socket is disposed with the connection"))),
        ["ReactorConnection: get_Output()"] = new(
            Expect.Works,
            "io.md: After it, Output's GetMemory, GetSpan, WriteAsync and FlushAsync throw ObjectDisposedException.",
            (output, connection) =>
            {
                var writer = (PipeWriter)output!;
                Action getMemory = () => writer.GetMemory();
                Action getSpan = () => writer.GetSpan();
                Action write = () => writer.WriteAsync(new byte[1]).AsTask();
                Action flush = () => writer.FlushAsync().AsTask();
                getMemory.Should().Throw<ObjectDisposedException>();
                getSpan.Should().Throw<ObjectDisposedException>();
                write.Should().Throw<ObjectDisposedException>("io.md says throw: at the call");
                flush.Should().Throw<ObjectDisposedException>("io.md says throw: at the call");
                return Task.CompletedTask;
            }),
        ["ReactorConnection: get_Input()"] = new(
            Expect.Works,
            "XML (DisposeAsync): Input ... stay readable, and a read of Input ends (it never waits for data that cannot come)",
            async (input, _) =>
            {
                // Input ends in order, or, when the socket was disposed under the receive loop before DisposeAsync began
                // (by the user or by the reactor's Dispose), with that ObjectDisposedException: "the error that ended
                // the connection" (XML of Input), which the pipe rethrows at the call or through the task.
                Task<ReadResult> read;
                try
                {
                    read = ((PipeReader)input!).ReadAsync().AsTask();
                }
                catch (ObjectDisposedException)
                {
                    return;
                }

                (await Task.WhenAny(read, Task.Delay(Timeout))).Should().BeSameAs(read, "a read of a disposed connection's Input must end");
                if (read.IsFaulted)
                {
                    read.Exception!.InnerException.Should().BeOfType<ObjectDisposedException>();
                }
                else
                {
                    read.Result.IsCompleted.Should().BeTrue("nothing more can arrive on a disposed connection");
                }
            }),

        // TimerWheel. timers.md: "DelayAsync, CreateTimer and ITimer.Change throw ObjectDisposedException; GetTimestamp
        // keeps working"; XML (Dispose): "the clock (GetTimestamp, TimestampFrequency and TimeProvider's helpers built on
        // them) and TickDuration keep working, and a timer's Dispose/DisposeAsync complete at once".
        ["TimerWheel: Dispose()"] = new(Expect.Works, "XML (Dispose): Idempotent."),
        ["TimerWheel: DelayAsync(TimeSpan, CancellationToken)"] = new(Expect.ThrowsDisposed, "timers.md: DelayAsync, CreateTimer and ITimer.Change throw ObjectDisposedException"),
        ["TimerWheel: CreateTimer(TimerCallback, Object, TimeSpan, TimeSpan)"] = new(Expect.ThrowsDisposed, "timers.md: DelayAsync, CreateTimer and ITimer.Change throw ObjectDisposedException"),
        ["TimerWheel: GetTimestamp()"] = new(Expect.Works, "timers.md: GetTimestamp keeps working"),
        ["TimerWheel: get_TimestampFrequency()"] = new(
            Expect.Works,
            "XML (Dispose): the clock (... TimestampFrequency ...) keeps working",
            (frequency, _) => Then(() => ((long)frequency!).Should().Be(Stopwatch.Frequency))),
        ["TimerWheel: get_TickDuration()"] = new(Expect.Works, "XML (Dispose): ... and TickDuration keep working"),
        ["TimerWheel: GetUtcNow()"] = new(Expect.Works, "XML (Dispose): TimeProvider's helpers built on the clock keep working (GetUtcNow: the system clock)"),
        ["TimerWheel: GetLocalNow()"] = new(Expect.Works, "XML (Dispose): TimeProvider's helpers keep working (GetUtcNow in LocalTimeZone)"),
        ["TimerWheel: get_LocalTimeZone()"] = new(Expect.Works, "XML (Dispose): TimeProvider's helpers keep working (TimeZoneInfo.Local)"),
        ["TimerWheel: GetElapsedTime(Int64)"] = new(Expect.Works, "XML (Dispose): TimeProvider's helpers built on GetTimestamp and TimestampFrequency keep working"),
        ["TimerWheel: GetElapsedTime(Int64, Int64)"] = new(Expect.Works, "XML (Dispose): TimeProvider's helpers built on TimestampFrequency keep working"),

        // The ITimer of TimerWheel.CreateTimer.
        ["ITimer (timer disposed): ITimer.Change(TimeSpan, TimeSpan)"] = new(
            Expect.Works,
            "timers.md: ITimer.Change after ITimer.Dispose returns false (as System.Threading.Timer's)",
            (changed, _) => Then(() => ((bool)changed!).Should().BeFalse())),
        ["ITimer (timer disposed): IDisposable.Dispose()"] = new(Expect.Works, "IDisposable's contract: a second Dispose does nothing (Timer.Dispose alike)"),
        ["ITimer (timer disposed): IAsyncDisposable.DisposeAsync()"] = new(Expect.Works, "timers.md: DisposeAsync completes once no callback runs (none does: the timer never fired)"),
        ["ITimer (wheel disposed): ITimer.Change(TimeSpan, TimeSpan)"] = new(Expect.ThrowsDisposed, "timers.md (TimerWheel.Dispose): DelayAsync, CreateTimer and ITimer.Change throw ObjectDisposedException"),
        ["ITimer (wheel disposed): IDisposable.Dispose()"] = new(Expect.Works, "XML (TimerWheel.Dispose): a timer's Dispose/DisposeAsync complete at once"),
        ["ITimer (wheel disposed): IAsyncDisposable.DisposeAsync()"] = new(Expect.Works, "XML (TimerWheel.Dispose): a timer's Dispose/DisposeAsync complete at once"),
    };

    private static readonly Lazy<List<Case>> s_cases = new(() =>
        s_subjects.SelectMany(s => Members(s.Surface).Select(m => new Case($"{s.Name} | {m.Name}", s, m.Method, m.Name))).ToList());

    private enum Expect
    {
        /// <summary>Returns (a task it returns completes successfully); the row's check may look at the result.</summary>
        Works,

        /// <summary>Throws <see cref="ObjectDisposedException"/> at the call.</summary>
        ThrowsDisposed,

        /// <summary>Returns a task that faults with <see cref="ObjectDisposedException"/>.</summary>
        FaultsDisposed,
    }

    public static TheoryData<PublicApiArgumentTests.CaseId> DisposedCases()
    {
        var data = new TheoryData<PublicApiArgumentTests.CaseId>();
        foreach (Case c in s_cases.Value)
        {
            data.Add(new PublicApiArgumentTests.CaseId(c.Key));
        }

        return data;
    }

    [Fact]
    public void Every_member_of_every_disposable_has_a_row()
    {
        var problems = new List<string>();
        var surfaces = s_subjects.Select(s => s.Surface).ToHashSet();
        foreach (Type disposable in Disposables().Where(t => !surfaces.Contains(t)))
        {
            problems.Add($"{disposable}: disposable, but no subject in s_subjects makes a disposed one");
        }

        var used = new HashSet<string>();
        foreach (Case c in s_cases.Value)
        {
            string key = RowKey(c);
            used.Add(key);
            if (!s_rows.ContainsKey(key))
            {
                problems.Add($"{key}: no row in s_rows (what does it do after disposal, and which documentation says so?)");
            }

            problems.AddRange(c.Member.GetParameters()
                .Where(p => !s_values.ContainsKey(p.ParameterType))
                .Select(p => $"{c.Key}: no value for parameter type {p.ParameterType} in s_values"));
        }

        problems.AddRange(s_rows.Keys.Where(k => !used.Contains(k)).Select(k => $"{k}: stale row (no subject has this member)"));

        // Joined, so the message lists every member at once.
        string.Join(Environment.NewLine, problems).Should().BeEmpty("every public member of every disposable must be classified");
        s_cases.Value.Should().NotBeEmpty();
    }

    [Theory]
    [MemberData(nameof(DisposedCases))]
    public async Task Member_after_disposal_does_what_its_documentation_says(PublicApiArgumentTests.CaseId id)
    {
        Case c = s_cases.Value.Single(x => x.Key == id.Key);
        s_rows.TryGetValue(RowKey(c), out Row? row).Should().BeTrue($"{RowKey(c)} needs a row (see Every_member_of_every_disposable_has_a_row)");

        await using var context = new PublicApiArgumentTests.SweepContext(resources);
        object instance = await c.Subject.Create(context).WaitAsync(Timeout);
        context.OwnIfDisposable(instance);
        Observed observed = await InvokeAsync(c.Member, instance, context);

        Describe(observed).Should().Be(Expected(row!.Expect), $"{c.Key}: {row.Rests}");
        if (row.Then is not null)
        {
            await row.Then(observed.Result, instance);
        }
    }

    private static string RowKey(Case c) => $"{c.Subject.Table}: {c.MemberName}";

    private static WorkStealingTaskScheduler NewScheduler() =>
        new(new WorkStealingTaskSchedulerOptions { WorkerCount = 1, ThreadNamePrefix = "api-disposed" });

    private static Task Then(Action check)
    {
        check();
        return Task.CompletedTask;
    }

    /// <summary>
    /// Exported types that are disposable, and the disposable types public members hand out (an interface such as
    /// <see cref="ITimer"/>, behind which an internal class stands).
    /// </summary>
    private static IEnumerable<Type> Disposables()
    {
        static bool IsDisposable(Type t) => typeof(IDisposable).IsAssignableFrom(t) || typeof(IAsyncDisposable).IsAssignableFrom(t);

        var found = new SortedSet<Type>(Comparer<Type>.Create((a, b) => string.CompareOrdinal(a.FullName, b.FullName)));
        foreach (Type type in s_library.GetExportedTypes())
        {
            if (IsDisposable(type))
            {
                found.Add(type);
            }

            foreach (MethodInfo method in type.GetMethods(BindingFlags.Public | BindingFlags.Instance | BindingFlags.Static | BindingFlags.DeclaredOnly))
            {
                Type returned = method.ReturnType;
                if (returned.IsGenericType && (returned.GetGenericTypeDefinition() == typeof(Task<>) || returned.GetGenericTypeDefinition() == typeof(ValueTask<>)))
                {
                    returned = returned.GetGenericArguments()[0];
                }

                if (IsDisposable(returned))
                {
                    found.Add(returned);
                }
            }
        }

        return found;
    }

    /// <summary>The members a holder of <paramref name="surface"/> can call, named as the rows name them.</summary>
    private static IEnumerable<(MethodInfo Method, string Name)> Members(Type surface)
    {
        if (surface.IsInterface)
        {
            foreach (Type contract in surface.GetInterfaces().Prepend(surface))
            {
                foreach (MethodInfo method in contract.GetMethods())
                {
                    yield return (method, $"{contract.Name}.{Signature(method)}");
                }
            }

            yield break;
        }

        foreach (MethodInfo method in surface.GetMethods(BindingFlags.Public | BindingFlags.Instance)
                     .Where(m => m.DeclaringType != typeof(object))
                     .OrderBy(m => Signature(m), StringComparer.Ordinal))
        {
            yield return (method, Signature(method));
        }

        // Explicit interface implementations are private methods, yet anyone holding the interface calls them.
        foreach (Type contract in surface.GetInterfaces())
        {
            InterfaceMapping map = surface.GetInterfaceMap(contract);
            for (int i = 0; i < map.TargetMethods.Length; i++)
            {
                if (map.TargetMethods[i].DeclaringType == surface && !map.TargetMethods[i].IsPublic)
                {
                    yield return (map.InterfaceMethods[i], $"{contract.Name}.{Signature(map.InterfaceMethods[i])}");
                }
            }
        }
    }

    private static string Signature(MethodInfo method) =>
        $"{method.Name}({string.Join(", ", method.GetParameters().Select(p => TypeName(p.ParameterType)))})";

    private static string TypeName(Type type)
    {
        if (!type.IsGenericType)
        {
            return type.Name;
        }

        var name = new StringBuilder(type.Name[..type.Name.IndexOf('`', StringComparison.Ordinal)]);
        name.Append('<').AppendJoin(", ", type.GetGenericArguments().Select(TypeName)).Append('>');
        return name.ToString();
    }

    /// <summary>
    /// Calls <paramref name="member"/> on a ThreadPool thread, bounded: a call that does not return within
    /// <see cref="Timeout"/> is a hang, a returned task that does not complete within it a lost completion.
    /// </summary>
    private static async Task<Observed> InvokeAsync(MethodInfo member, object instance, PublicApiArgumentTests.SweepContext context)
    {
        object?[] arguments = member.GetParameters().Select(p => s_values[p.ParameterType]()).ToArray();
        Task<object?> call = Task.Run(() => member.Invoke(instance, BindingFlags.DoNotWrapExceptions, binder: null, arguments, culture: null));
        if (await Task.WhenAny(call, Task.Delay(Timeout)) != call)
        {
            return new Observed(Hung: true);
        }

        if (call.IsFaulted)
        {
            return new Observed(Thrown: call.Exception!.InnerException);
        }

        object? result = call.Result;
        context.OwnIfDisposable(result);
        Task? task = PublicApiArgumentTests.ReturnedTask(result);
        if (task is null)
        {
            return new Observed(Result: result);
        }

        if (await Task.WhenAny(task, Task.Delay(Timeout)) != task)
        {
            return new Observed(NeverCompleted: true);
        }

        if (!task.IsCompletedSuccessfully)
        {
            return new Observed(Faulted: task.IsFaulted ? task.Exception!.InnerException : new TaskCanceledException(task));
        }

        Type returns = member.ReturnType;
        object? value = returns.IsGenericType ? task.GetType().GetProperty(nameof(Task<int>.Result))!.GetValue(task) : null;
        context.OwnIfDisposable(value);
        return new Observed(Result: value);
    }

    private static string Expected(Expect expect) => expect switch
    {
        Expect.Works => "works",
        Expect.ThrowsDisposed => $"throws {nameof(ObjectDisposedException)}",
        Expect.FaultsDisposed => $"returns a task that faults with {nameof(ObjectDisposedException)}",
        _ => throw new ArgumentOutOfRangeException(nameof(expect)),
    };

    private static string Describe(Observed observed) => observed switch
    {
        { Hung: true } => $"hangs (no return within {Timeout.TotalSeconds} s)",
        { NeverCompleted: true } => $"returns a task that does not complete within {Timeout.TotalSeconds} s",
        { Thrown: ObjectDisposedException } => Expected(Expect.ThrowsDisposed),
        { Thrown: { } e } => $"throws {e.GetType().Name}: {e.Message}",
        { Faulted: ObjectDisposedException } => Expected(Expect.FaultsDisposed),
        { Faulted: { } e } => $"returns a task that faults with {e.GetType().Name}: {e.Message}",
        _ => Expected(Expect.Works),
    };

    /// <summary>A way to get a disposed instance of <see cref="Surface"/>, whose members the rows of <see cref="Table"/> classify.</summary>
    private sealed record Subject(string Name, string Table, Type Surface, Func<PublicApiArgumentTests.SweepContext, Task<object>> Create);

    /// <summary>What a member does after disposal, the documentation that says so, and an optional check of its result.</summary>
    private sealed record Row(Expect Expect, string Rests, Func<object?, object, Task>? Then = null);

    private sealed record Case(string Key, Subject Subject, MethodInfo Member, string MemberName);

    /// <summary>What a call did: returned (a result), threw, returned a task that faulted, hung, or returned a task that never completed.</summary>
    private sealed record Observed(object? Result = null, Exception? Thrown = null, Exception? Faulted = null, bool Hung = false, bool NeverCompleted = false);
}
