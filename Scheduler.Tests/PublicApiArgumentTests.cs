using System.IO.Pipelines;
using System.Net;
using System.Net.Sockets;
using System.Reflection;
using System.Text;
using System.Threading.Tasks.Sources;
using Xunit.Abstractions;
using Scheduler.IO;
using Scheduler.Sources;
using Scheduler.Timers;

namespace Scheduler.Tests;

/// <summary>
/// A reflection sweep of every public constructor, method, property setter and explicit interface implementation of the
/// <c>Scheduler</c> assembly's exported types: each parameter of reference type annotated non-nullable must refuse null
/// with <see cref="ArgumentNullException"/> naming that parameter; each one annotated nullable must accept null.
/// </summary>
/// <remarks>
/// <para>
/// Individual tests check many arguments, but only a sweep catches the member added later (or forgotten) that takes null
/// and fails with a <see cref="NullReferenceException"/> deep inside, or on another thread. The sweep never skips in
/// silence: valid values come from explicit tables (<see cref="s_values"/> per parameter type, <see cref="s_instances"/> per
/// declaring type, <see cref="s_closings"/> per generic type), and a member the tables cannot serve fails
/// <see cref="Every_swept_member_has_its_factories"/> by name, so whoever adds a public member extends the tables.
/// </para>
/// <para>
/// Generic parameters: nullability is read on the open definition. A parameter of type <c>T</c> reads NotNull only when
/// <c>T</c> is constrained to a non-nullable reference type (<c>ValueTaskSourcePool&lt;T&gt; where T : class</c>, whose
/// <c>Return(T)</c> must refuse null); an unconstrained <c>T</c> reads Nullable, because the caller may instantiate it with
/// a nullable type (<c>PooledValueTaskSource&lt;string?&gt;.TrySetResult(null)</c> is a legitimate result), so null must
/// pass through. To be able to pass null at all, each generic type is closed over a reference type.
/// </para>
/// <para>
/// Task- and ValueTask-returning members: the rule accepts the exception thrown synchronously or carried by the returned
/// task. The library validates synchronously everywhere (<see cref="ReactorSocket.ConnectAsync"/> and
/// <see cref="TimerWheel.DelayAsync"/> are not <c>async</c> methods: their checks run before anything starts), and
/// <see cref="Task_returning_members_refuse_null_synchronously"/> holds every such member to that.
/// </para>
/// <para>
/// Out of scope: members declared by the BCL and inherited unchanged (TaskScheduler's, TimeProvider's); <c>out</c>
/// parameters, which are not inputs; and the library's internal implementations of BCL abstractions handed out by public
/// members (the <see cref="PipeScheduler"/>, the connection's pipes, the <see cref="ITimer"/>), whose null behaviour is
/// the BCL's contract.
/// </para>
/// </remarks>
public sealed partial class PublicApiArgumentTests(PublicApiArgumentTests.Resources resources) : IClassFixture<PublicApiArgumentTests.Resources>
{
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(20);

    private static readonly Assembly s_library = typeof(WorkStealingTaskScheduler).Assembly;

    /// <summary>What each open generic type is closed over: a reference type, so that a null <c>T</c> can be passed.</summary>
    private static readonly Dictionary<Type, Type[]> s_closings = new()
    {
        [typeof(PooledValueTaskSource<>)] = [typeof(string)],
        [typeof(WakerCore<>)] = [typeof(string)],
        [typeof(ValueTaskSourcePool<>)] = [typeof(PooledValueTaskSource)], // T : class
    };

    /// <summary>
    /// A receiver per declaring type (closed generic types by their open definition), created fresh for each case and
    /// disposed after it unless the fixture owns it.
    /// </summary>
    private static readonly Dictionary<Type, Func<SweepContext, object>> s_instances = new()
    {
        [typeof(WorkStealingTaskScheduler)] = c => c.Resources.Scheduler,
        [typeof(WorkStealingTaskSchedulerOptions)] = _ => NewOptions(),
        [typeof(SchedulerStatistics)] = _ => default(SchedulerStatistics),
        [typeof(PooledValueTaskSource)] = _ => PooledValueTaskSource.Rent(),
        [typeof(PooledValueTaskSource<>)] = _ => PooledValueTaskSource<string>.Rent(),
        [typeof(ValueTaskSourcePool<>)] = _ => new ValueTaskSourcePool<PooledValueTaskSource>(PooledValueTaskSource.Rent, 4),
        [typeof(WakerCore<>)] = _ => new WakerCore<string>(new NoOpWorkItem()), // boxed: reflection calls mutate the box
        [typeof(TimerWheel)] = c => c.Own(new TimerWheel()),
        [typeof(IoReactor)] = c => c.Resources.Reactor,
        [typeof(ReactorSocket)] = c => c.Resources.ConnectedSocket(c),
        [typeof(ReactorConnection)] = c => c.Own(ReactorConnection.Create(c.Resources.ConnectedSocket(c))),
    };

    /// <summary>A valid value per (closed) parameter type, for the parameters of a call that are not the one under test.</summary>
    private static readonly Dictionary<Type, Func<SweepContext, object?>> s_values = new()
    {
        // Value types: explicit too, since default is not always valid (a zero TimeSpan is no tick duration).
        [typeof(int)] = _ => 1,
        [typeof(short)] = c => c.InstanceVersion(), // the current operation's token, so version-checked calls take their real path
        [typeof(TimeSpan)] = _ => TimeSpan.FromSeconds(30), // a due time or period that will not fire before the case disposes its timer
        [typeof(CancellationToken)] = _ => CancellationToken.None,
        [typeof(ValueTaskSourceOnCompletedFlags)] = _ => ValueTaskSourceOnCompletedFlags.None,

        // Reference types.
        [typeof(string)] = _ => "sweep",
        [typeof(object)] = _ => new object(),
        [typeof(Exception)] = _ => new InvalidOperationException("sweep"),
        [typeof(Action<object?>)] = _ => (Action<object?>)(_ => { }),
        [typeof(TimerCallback)] = _ => (TimerCallback)(_ => { }),
        [typeof(IThreadPoolWorkItem)] = _ => new NoOpWorkItem(),
        [typeof(PooledValueTaskSource)] = _ => PooledValueTaskSource.Rent(),
        [typeof(Func<PooledValueTaskSource>)] = _ => (Func<PooledValueTaskSource>)PooledValueTaskSource.Rent,
        [typeof(PipeOptions)] = _ => PipeOptions.Default,
        [typeof(EndPoint)] = _ => new IPEndPoint(IPAddress.Loopback, 0),
        [typeof(WorkStealingTaskScheduler)] = c => c.Resources.Scheduler,
        [typeof(WorkStealingTaskSchedulerOptions)] = _ => NewOptions(),
        [typeof(IoReactor)] = c => c.Resources.Reactor,
        [typeof(ReactorSocket)] = c => c.Resources.ConnectedSocket(c),
    };

    /// <summary>
    /// Types whose setters are validated later, by a consumer, as their documentation says ("Validated when the scheduler
    /// is created"): a setter there may take null, and then the consumer must throw <see cref="ArgumentNullException"/>
    /// naming the property (as it names a property out of range).
    /// </summary>
    private static readonly Dictionary<Type, Action<object>> s_deferredValidation = new()
    {
        [typeof(WorkStealingTaskSchedulerOptions)] = options => new WorkStealingTaskScheduler((WorkStealingTaskSchedulerOptions)options).Dispose(),
    };

    /// <summary>(member, parameter) cases left out on purpose, each with its reason. A stale entry fails the coverage check.</summary>
    private static readonly Dictionary<string, string> s_exclusions = new()
    {
        ["SchedulerStatistics.Equals(Object): obj"] =
            "the record struct's compiler-generated override of object.Equals: null is a valid argument by the BCL's contract (it returns false), and the parameter is nullability-oblivious",
    };

    private static readonly Lazy<Surface> s_surface = new(Surface.Discover);

    public static TheoryData<CaseId> NullCases()
    {
        var data = new TheoryData<CaseId>();
        foreach (SweepCase c in s_surface.Value.Cases.Where(c => !s_exclusions.ContainsKey(c.Key)))
        {
            data.Add(new CaseId(c.Key));
        }

        return data;
    }

    [Fact]
    public void Every_swept_member_has_its_factories()
    {
        Surface surface = s_surface.Value;
        var problems = new List<string>(surface.Problems);
        foreach (SweepCase c in surface.Cases)
        {
            problems.AddRange(c.MissingFactories());
            if (c.Nullability == NullabilityState.Unknown && !s_exclusions.ContainsKey(c.Key))
            {
                problems.Add($"{c.Key}: nullability unknown (oblivious context): annotate it, or add an exclusion with a reason");
            }
        }

        var keys = surface.Cases.Select(c => c.Key).ToHashSet();
        problems.AddRange(s_exclusions.Keys.Where(k => !keys.Contains(k)).Select(k => $"{k}: stale exclusion (no such member/parameter)"));

        // Joined, so the message lists every member at once (a collection assertion shows only the first).
        string.Join(Environment.NewLine, problems).Should().BeEmpty("every public member with a reference-type parameter must be swept; extend the tables of PublicApiArgumentTests");
        surface.Cases.Should().NotBeEmpty();
    }

    [Theory]
    [MemberData(nameof(NullCases))]
    public async Task Null_argument_is_refused_or_accepted_as_annotated(CaseId id)
    {
        SweepCase c = s_surface.Value.Find(id.Key);
        c.MissingFactories().Should().BeEmpty("the sweep needs a valid value for every other argument (see Every_swept_member_has_its_factories)");

        await using var context = new SweepContext(resources);
        if (c.Nullability == NullabilityState.NotNull)
        {
            Outcome outcome = await InvokeWithNullAsync(c, context);
            if (c.IsSetter && s_deferredValidation.TryGetValue(c.OpenDeclaringType, out Action<object>? consumer) && outcome.Thrown is null)
            {
                // The type documents validation at its consumer: the null must be refused there, naming the property.
                Exception? thrown = Record.Exception(() => consumer(context.Instance!));
                Describe(thrown).Should().Be(
                    Expected(c.Member.Name["set_".Length..]),
                    $"{c.Key}: the setter took null, so the consumer that validates {c.OpenDeclaringType.Name} must refuse it");
                return;
            }

            Describe(outcome.Thrown ?? outcome.Faulted).Should().Be(Expected(c.Parameter.Name!), $"{c.Key} is annotated non-nullable");
        }
        else
        {
            Outcome outcome = await InvokeWithNullAsync(c, context);
            (outcome.Thrown ?? outcome.Faulted).Should().BeNull($"{c.Key} is annotated nullable, so null is a valid argument");
        }
    }

    [Fact]
    public async Task Task_returning_members_refuse_null_synchronously()
    {
        // The library validates before starting anything and before returning a task, so a caller's bad argument surfaces
        // at the call, not at some later await (or never, for a task nobody awaits). A member that moves its check into an
        // async body would still pass the theory above; this holds it to the library's convention.
        var asynchronous = new List<string>();
        foreach (SweepCase c in s_surface.Value.Cases.Where(c => c.Nullability == NullabilityState.NotNull && ReturnsTask(c.Member)))
        {
            await using var context = new SweepContext(resources);
            Outcome outcome = await InvokeWithNullAsync(c, context);
            if (outcome.Thrown is null)
            {
                asynchronous.Add($"{c.Key}: {Describe(outcome.Faulted)} from the returned task");
            }
        }

        string.Join(Environment.NewLine, asynchronous).Should().BeEmpty();
    }

    private static string Expected(string paramName) => $"{nameof(ArgumentNullException)} (ParamName {paramName})";

    private static string Describe(Exception? e) => e switch
    {
        null => "no exception",
        ArgumentException a => $"{a.GetType().Name} (ParamName {a.ParamName})",
        _ => $"{e.GetType().Name}: {e.Message}",
    };

    private static bool ReturnsTask(MethodBase member) =>
        member is MethodInfo m && (typeof(Task).IsAssignableFrom(m.ReturnType) || m.ReturnType == typeof(ValueTask)
            || (m.ReturnType.IsGenericType && m.ReturnType.GetGenericTypeDefinition() == typeof(ValueTask<>)));

    /// <summary>Calls the case's member with null for its parameter and valid values for the rest.</summary>
    private static async Task<Outcome> InvokeWithNullAsync(SweepCase c, SweepContext context)
    {
        object? instance = c.Member.IsStatic || c.Member is ConstructorInfo ? null : s_instances[c.OpenDeclaringType](context);
        context.Instance = instance;
        ParameterInfo[] parameters = c.Member.GetParameters();
        object?[] arguments = new object?[parameters.Length];
        for (int i = 0; i < parameters.Length; i++)
        {
            arguments[i] = i == c.Parameter.Position || parameters[i].IsOut ? null : s_values[parameters[i].ParameterType](context);
        }

        object? result;
        try
        {
            result = c.Member is ConstructorInfo ctor
                ? ctor.Invoke(BindingFlags.DoNotWrapExceptions, binder: null, arguments, culture: null)
                : c.Member.Invoke(instance, BindingFlags.DoNotWrapExceptions, binder: null, arguments, culture: null);
        }
        catch (Exception e)
        {
            return new Outcome(e, null);
        }

        context.OwnIfDisposable(result);
        Task? task = ReturnedTask(result);
        if (task is null)
        {
            return new Outcome(null, null);
        }

        // A missing check lets a call run on with a null: give its task a moment to fail, and own what it produced.
        await Task.WhenAny(task, Task.Delay(TimeSpan.FromMilliseconds(200)));
        if (task.IsCompletedSuccessfully && task.GetType().IsGenericType)
        {
            context.OwnIfDisposable(task.GetType().GetProperty(nameof(Task<int>.Result))!.GetValue(task));
        }

        return new Outcome(null, task.IsFaulted ? task.Exception!.InnerException : null);
    }

    /// <summary>The task a member returned (a <see cref="ValueTask"/> or <see cref="ValueTask{TResult}"/> as one), or null when it returned none.</summary>
    internal static Task? ReturnedTask(object? result) => result switch
    {
        Task t => t,
        ValueTask vt => vt.AsTask(),
        not null when result.GetType().IsGenericType && result.GetType().GetGenericTypeDefinition() == typeof(ValueTask<>) =>
            (Task)result.GetType().GetMethod(nameof(ValueTask<int>.AsTask))!.Invoke(result, null)!,
        _ => null,
    };

    private static WorkStealingTaskSchedulerOptions NewOptions() => new() { WorkerCount = 1, ThreadNamePrefix = "api-sweep" };

    /// <summary>What a call did: threw synchronously, or returned a task that faulted.</summary>
    private readonly record struct Outcome(Exception? Thrown, Exception? Faulted);

    /// <summary>One (member, parameter of reference type) pair.</summary>
    private sealed record SweepCase(string Key, Type OpenDeclaringType, MethodBase Member, ParameterInfo Parameter, NullabilityState Nullability)
    {
        public bool IsSetter => Member is MethodInfo { IsSpecialName: true } m && m.Name.StartsWith("set_", StringComparison.Ordinal);

        public IEnumerable<string> MissingFactories()
        {
            if (!Member.IsStatic && Member is not ConstructorInfo && !s_instances.ContainsKey(OpenDeclaringType))
            {
                yield return $"{Key}: no instance factory for {OpenDeclaringType.Name} in s_instances";
            }

            foreach (ParameterInfo p in Member.GetParameters())
            {
                if (p.Position != Parameter.Position && !p.IsOut && !s_values.ContainsKey(p.ParameterType))
                {
                    yield return $"{Key}: no value factory for parameter type {p.ParameterType} in s_values";
                }
            }
        }
    }

    /// <summary>The swept cases, and what could not be swept.</summary>
    private sealed class Surface
    {
        public List<SweepCase> Cases { get; } = [];

        public List<string> Problems { get; } = [];

        public SweepCase Find(string key) =>
            Cases.SingleOrDefault(c => c.Key == key) ?? throw new InvalidOperationException($"No case {key}");

        public static Surface Discover()
        {
            var surface = new Surface();
            const BindingFlags Declared = BindingFlags.Public | BindingFlags.Instance | BindingFlags.Static | BindingFlags.DeclaredOnly;
            foreach (Type open in s_library.GetExportedTypes().OrderBy(t => t.FullName, StringComparer.Ordinal))
            {
                Type closed = open;
                if (open.IsGenericTypeDefinition)
                {
                    if (!s_closings.TryGetValue(open, out Type[]? arguments))
                    {
                        surface.Problems.Add($"{open}: generic type without a closing in s_closings");
                        continue;
                    }

                    closed = open.MakeGenericType(arguments);
                }

                var members = new List<(MethodBase Member, string Name)>();
                members.AddRange(open.GetConstructors(BindingFlags.Public | BindingFlags.Instance).Select(m => ((MethodBase)m, m.Name)));
                members.AddRange(open.GetMethods(Declared).Select(m => ((MethodBase)m, m.Name)));
                if (!open.IsInterface)
                {
                    // Explicit interface implementations are private methods, yet anyone holding the interface calls them.
                    foreach (Type contract in open.GetInterfaces())
                    {
                        InterfaceMapping map = open.GetInterfaceMap(contract);
                        for (int i = 0; i < map.TargetMethods.Length; i++)
                        {
                            MethodInfo target = map.TargetMethods[i];
                            if (target.DeclaringType == open && !target.IsPublic)
                            {
                                members.Add((target, $"{TypeName(contract)}.{map.InterfaceMethods[i].Name}"));
                            }
                        }
                    }
                }

                foreach ((MethodBase member, string name) in members)
                {
                    surface.AddCases(open, closed, member, name);
                }
            }

            return surface;
        }

        private void AddCases(Type open, Type closed, MethodBase openMember, string name)
        {
            ParameterInfo[] openParameters = openMember.GetParameters();
            string signature = $"{TypeName(open)}.{name}({string.Join(", ", openParameters.Select(p => TypeName(p.ParameterType)))})";
            if (openMember is MethodInfo { IsGenericMethodDefinition: true })
            {
                Problems.Add($"{signature}: generic method; the sweep has no closing for its type parameters yet");
                return;
            }

            MethodBase member = open == closed ? openMember : MethodBase.GetMethodFromHandle(openMember.MethodHandle, closed.TypeHandle)!;
            ParameterInfo[] parameters = member.GetParameters();
            var nullability = new NullabilityInfoContext();
            for (int i = 0; i < parameters.Length; i++)
            {
                ParameterInfo p = parameters[i];
                if (p.IsOut)
                {
                    continue; // an out parameter is written by the member, never read: there is no null to pass in
                }

                if (p.ParameterType.IsByRef || p.ParameterType.IsPointer)
                {
                    Problems.Add($"{signature}: parameter {p.Name} is by reference or a pointer; extend the sweep");
                    continue;
                }

                if (p.ParameterType.IsValueType)
                {
                    continue;
                }

                NullabilityState state = nullability.Create(openParameters[i]).WriteState;
                Cases.Add(new SweepCase($"{signature}: {p.Name}", open, member, p, state));
            }
        }
    }

    private static string TypeName(Type type)
    {
        if (type.IsGenericParameter || !type.IsGenericType)
        {
            return type.Name;
        }

        var name = new StringBuilder(type.Name[..type.Name.IndexOf('`', StringComparison.Ordinal)]);
        name.Append('<').AppendJoin(", ", type.GetGenericArguments().Select(TypeName)).Append('>');
        return name.ToString();
    }

    /// <summary>One case's receiver and the objects it created, disposed (newest first) when the case ends.</summary>
    internal sealed class SweepContext(Resources resources) : IAsyncDisposable
    {
        private readonly List<object> _owned = [];
        private readonly List<IDisposable> _peers = [];

        public Resources Resources { get; } = resources;

        public object? Instance { get; set; }

        public T Own<T>(T value)
            where T : notnull
        {
            _owned.Add(value);
            return value;
        }

        /// <summary>
        /// Owns the far end of a connection the case uses, closed before anything else: a connection's DisposeAsync then
        /// sees the peer gone at once instead of waiting out its grace period (about a second) for a peer that never reads.
        /// </summary>
        public void OwnPeer(IDisposable peer) => _peers.Add(peer);

        public void OwnIfDisposable(object? value)
        {
            if (value is IDisposable or IAsyncDisposable && !ReferenceEquals(value, Resources.Scheduler) && !ReferenceEquals(value, Resources.Reactor))
            {
                _owned.Add(value);
            }
        }

        /// <summary>A fresh wheel of the case's own.</summary>
        public TimerWheel Wheel() => Own(new TimerWheel());

        public short InstanceVersion() =>
            Instance?.GetType().GetProperty("Version", typeof(short)) is { } version ? (short)version.GetValue(Instance)! : (short)0;

        public async ValueTask DisposeAsync()
        {
            _peers.ForEach(peer => peer.Dispose());
            for (int i = _owned.Count - 1; i >= 0; i--)
            {
                switch (_owned[i])
                {
                    case IAsyncDisposable asyncDisposable:
                        await asyncDisposable.DisposeAsync().AsTask().WaitAsync(Timeout);
                        break;
                    case IDisposable disposable:
                        disposable.Dispose();
                        break;
                }
            }
        }
    }

    /// <summary>The class's shared scheduler (one worker), reactor and listener; each case's own objects are its context's.</summary>
    public sealed class Resources : IDisposable
    {
        public Resources()
        {
            Scheduler = new WorkStealingTaskScheduler(new WorkStealingTaskSchedulerOptions { WorkerCount = 1, ThreadNamePrefix = "api-sweep" });
            Reactor = new IoReactor(Scheduler);
            Listener = ReactorSocket.Listen(Reactor, new IPEndPoint(IPAddress.Loopback, 0));
        }

        public WorkStealingTaskScheduler Scheduler { get; }

        public IoReactor Reactor { get; }

        public ReactorSocket Listener { get; }

        /// <summary>The client end of a fresh loopback connection; both ends belong to <paramref name="context"/>.</summary>
        internal ReactorSocket ConnectedSocket(SweepContext context)
        {
            Task<ReactorSocket> accept = Listener.AcceptAsync().AsTask();
            ReactorSocket client = context.Own(ReactorSocket.ConnectAsync(Reactor, Listener.LocalEndPoint!).AsTask().WaitAsync(Timeout).GetAwaiter().GetResult());
            context.OwnPeer(accept.WaitAsync(Timeout).GetAwaiter().GetResult());
            return client;
        }

        public void Dispose()
        {
            Listener.Dispose();
            Reactor.Dispose();
            Scheduler.Dispose();
        }
    }

    /// <summary>
    /// A case's key as theory data: xunit cuts a string argument to 50 characters in the test's name, which would hide which
    /// member and parameter failed; an object's <see cref="ToString"/> is shown whole.
    /// </summary>
    public sealed class CaseId : IXunitSerializable
    {
        [Obsolete("For xunit's deserialization only.")]
        public CaseId()
        {
        }

        public CaseId(string key) => Key = key;

        public string Key { get; private set; } = "";

        public void Deserialize(IXunitSerializationInfo info) => Key = info.GetValue<string>(nameof(Key));

        public void Serialize(IXunitSerializationInfo info) => info.AddValue(nameof(Key), Key);

        public override string ToString() => Key;
    }

    private sealed class NoOpWorkItem : IThreadPoolWorkItem
    {
        public void Execute()
        {
        }
    }
}
