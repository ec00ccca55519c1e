using System.IO.Pipelines;
using System.Net;
using System.Net.Sockets;
using System.Reflection;
using System.Text;
using System.Xml.Linq;
using Scheduler.IO;
using Scheduler.Sources;
using Scheduler.Timers;

namespace Scheduler.Tests;

// The numeric and TimeSpan arguments whose valid range API.md or the XML docs state: a value just outside it throws
// ArgumentOutOfRangeException naming the parameter (for WorkStealingTaskSchedulerOptions, naming the property: the
// options are "validated when the scheduler is created"), and the edge values just inside it are accepted, so an
// off-by-one check fails either way. Every public member whose XML docs list ArgumentOutOfRangeException must have a
// row here (Every_documented_range_has_its_rows), so a range documented later gets its check too.
public sealed partial class PublicApiArgumentTests
{
    private static readonly RangeCase[] s_ranges =
    [
        // API.md: "< 1 → ArgumentOutOfRangeException"; the XML docs: "less than 1 or more than MaxWorkerCount".
        .. Refused("M:Scheduler.WorkStealingTaskScheduler.#ctor(System.Int32)", "workerCount", c => c.Own(new WorkStealingTaskScheduler(0)), "0"),
        .. Refused("M:Scheduler.WorkStealingTaskScheduler.#ctor(System.Int32)", "workerCount", c => c.Own(new WorkStealingTaskScheduler(-1)), "-1"),
        .. Refused("M:Scheduler.WorkStealingTaskScheduler.#ctor(System.Int32)", "workerCount", c => c.Own(new WorkStealingTaskScheduler(WorkStealingTaskSchedulerOptions.MaxWorkerCount + 1)), "MaxWorkerCount + 1"),
        .. Accepted("M:Scheduler.WorkStealingTaskScheduler.#ctor(System.Int32)", c => c.Own(new WorkStealingTaskScheduler(1)), "1"),

        // The options, each as its XML docs state; refused by the constructor that validates them.
        .. Option("WorkerCount", o => o.WorkerCount = 0, "0", refused: true),
        .. Option("WorkerCount", o => o.WorkerCount = WorkStealingTaskSchedulerOptions.MaxWorkerCount + 1, "MaxWorkerCount + 1", refused: true),
        .. Option("SpinIterations", o => o.SpinIterations = -1, "-1", refused: true), // "0 parks at once"
        .. Option("SpinIterations", o => o.SpinIterations = 0, "0", refused: false),
        .. Option("FairnessInterval", o => o.FairnessInterval = 0, "0", refused: true), // "must be positive"
        .. Option("FairnessInterval", o => o.FairnessInterval = -1, "-1", refused: true),
        .. Option("FairnessInterval", o => o.FairnessInterval = 1, "1", refused: false),
        .. Option("LifoSlotLimit", o => o.LifoSlotLimit = -1, "-1", refused: true), // "must not be negative"
        .. Option("LifoSlotLimit", o => o.LifoSlotLimit = 0, "0", refused: false), // "0 disables the LIFO slot"
        .. Option("LocalQueueCapacity", o => o.LocalQueueCapacity = 8, "8", refused: true), // "a power of two from 16 to 1,048,576"
        .. Option("LocalQueueCapacity", o => o.LocalQueueCapacity = 24, "24 (not a power of two)", refused: true),
        .. Option("LocalQueueCapacity", o => o.LocalQueueCapacity = 2 << 20, "2,097,152", refused: true),
        .. Option("LocalQueueCapacity", o => o.LocalQueueCapacity = -16, "-16", refused: true),
        .. Option("LocalQueueCapacity", o => o.LocalQueueCapacity = 16, "16", refused: false),
        .. Option("LocalQueueCapacity", o => o.LocalQueueCapacity = 1 << 20, "1,048,576", refused: false),
        // "Must be positive (at most int.MaxValue milliseconds) or infinite."
        .. Option("BlockingCompensationDelay", o => o.BlockingCompensationDelay = TimeSpan.Zero, "zero", refused: true),
        .. Option("BlockingCompensationDelay", o => o.BlockingCompensationDelay = TimeSpan.FromMilliseconds(-2), "-2 ms", refused: true),
        .. Option("BlockingCompensationDelay", o => o.BlockingCompensationDelay = TimeSpan.FromMilliseconds(int.MaxValue + 1.0), "int.MaxValue + 1 ms", refused: true),
        .. Option("BlockingCompensationDelay", o => o.BlockingCompensationDelay = TimeSpan.FromTicks(1), "one tick", refused: false),
        .. Option("BlockingCompensationDelay", o => o.BlockingCompensationDelay = TimeSpan.FromMilliseconds(int.MaxValue), "int.MaxValue ms", refused: false),
        .. Option("BlockingCompensationDelay", o => o.BlockingCompensationDelay = System.Threading.Timeout.InfiniteTimeSpan, "infinite", refused: false),

        // "backlog is less than 1."
        .. Refused("M:Scheduler.IO.ReactorSocket.Listen(Scheduler.IO.IoReactor,System.Net.EndPoint,System.Int32)", "backlog", c => c.Own(ReactorSocket.Listen(c.Resources.Reactor, Loopback, 0)), "0"),
        .. Refused("M:Scheduler.IO.ReactorSocket.Listen(Scheduler.IO.IoReactor,System.Net.EndPoint,System.Int32)", "backlog", c => c.Own(ReactorSocket.Listen(c.Resources.Reactor, Loopback, -1)), "-1"),
        .. Accepted("M:Scheduler.IO.ReactorSocket.Listen(Scheduler.IO.IoReactor,System.Net.EndPoint,System.Int32)", c => c.Own(ReactorSocket.Listen(c.Resources.Reactor, Loopback, 1)), "1"),

        // "how is not a defined value."
        .. Refused("M:Scheduler.IO.ReactorSocket.Shutdown(System.Net.Sockets.SocketShutdown)", "how", c => Void(() => c.Resources.ConnectedSocket(c).Shutdown((SocketShutdown)7)), "7"),
        .. Accepted("M:Scheduler.IO.ReactorSocket.Shutdown(System.Net.Sockets.SocketShutdown)", c => Void(() => c.Resources.ConnectedSocket(c).Shutdown(SocketShutdown.Both)), "Both"),

        // "Options with a minimum segment size of 0."
        .. Refused("M:Scheduler.IO.ReactorConnection.Create(Scheduler.IO.ReactorSocket,System.IO.Pipelines.PipeOptions,System.IO.Pipelines.PipeOptions)", "inputOptions",
            c => c.Own(ReactorConnection.Create(c.Resources.ConnectedSocket(c), inputOptions: new PipeOptions(minimumSegmentSize: 0))), "minimum segment size 0"),
        .. Refused("M:Scheduler.IO.ReactorConnection.Create(Scheduler.IO.ReactorSocket,System.IO.Pipelines.PipeOptions,System.IO.Pipelines.PipeOptions)", "outputOptions",
            c => c.Own(ReactorConnection.Create(c.Resources.ConnectedSocket(c), outputOptions: new PipeOptions(minimumSegmentSize: 0))), "minimum segment size 0"),
        .. Accepted("M:Scheduler.IO.ReactorConnection.Create(Scheduler.IO.ReactorSocket,System.IO.Pipelines.PipeOptions,System.IO.Pipelines.PipeOptions)",
            c => c.Own(ReactorConnection.Create(c.Resources.ConnectedSocket(c), new PipeOptions(minimumSegmentSize: 1), new PipeOptions(minimumSegmentSize: 1))), "minimum segment size 1"),

        // "capacity is negative." (0 retains none.)
        .. Refused("M:Scheduler.Sources.ValueTaskSourcePool`1.#ctor(System.Func{`0},System.Int32)", "capacity", _ => new ValueTaskSourcePool<PooledValueTaskSource>(PooledValueTaskSource.Rent, -1), "-1"),
        .. Accepted("M:Scheduler.Sources.ValueTaskSourcePool`1.#ctor(System.Func{`0},System.Int32)", _ => new ValueTaskSourcePool<PooledValueTaskSource>(PooledValueTaskSource.Rent, 0), "0"),

        // "tickDuration is zero, negative, or longer than one hour."
        .. Refused("M:Scheduler.Timers.TimerWheel.#ctor(System.TimeSpan)", "tickDuration", c => c.Own(new TimerWheel(TimeSpan.Zero)), "zero"),
        .. Refused("M:Scheduler.Timers.TimerWheel.#ctor(System.TimeSpan)", "tickDuration", c => c.Own(new TimerWheel(TimeSpan.FromTicks(-1))), "-1 tick"),
        .. Refused("M:Scheduler.Timers.TimerWheel.#ctor(System.TimeSpan)", "tickDuration", c => c.Own(new TimerWheel(TimeSpan.FromHours(1) + TimeSpan.FromTicks(1))), "one hour and a tick"),
        .. Accepted("M:Scheduler.Timers.TimerWheel.#ctor(System.TimeSpan)", c => c.Own(new TimerWheel(TimeSpan.FromHours(1))), "one hour"),

        // "delay is negative and not Timeout.InfiniteTimeSpan."
        .. Refused("M:Scheduler.Timers.TimerWheel.DelayAsync(System.TimeSpan,System.Threading.CancellationToken)", "delay", c => c.Wheel().DelayAsync(TimeSpan.FromTicks(-1)).AsTask(), "-1 tick"),
        .. Refused("M:Scheduler.Timers.TimerWheel.DelayAsync(System.TimeSpan,System.Threading.CancellationToken)", "delay", c => c.Wheel().DelayAsync(TimeSpan.FromMilliseconds(-2)).AsTask(), "-2 ms"),
        .. Accepted("M:Scheduler.Timers.TimerWheel.DelayAsync(System.TimeSpan,System.Threading.CancellationToken)", c => c.Wheel().DelayAsync(TimeSpan.Zero).AsTask(), "zero"),

        // "dueTime or period is -2 ms or less"; whole milliseconds truncated toward zero, so -1.9 ms counts as infinite.
        .. Refused(CreateTimerId, "dueTime", c => c.Own(c.Wheel().CreateTimer(_ => { }, null, TimeSpan.FromMilliseconds(-2), TimeSpan.Zero)), "-2 ms"),
        .. Refused(CreateTimerId, "dueTime", c => c.Own(c.Wheel().CreateTimer(_ => { }, null, TimeSpan.MinValue, TimeSpan.Zero)), "TimeSpan.MinValue"),
        .. Refused(CreateTimerId, "period", c => c.Own(c.Wheel().CreateTimer(_ => { }, null, TimeSpan.FromSeconds(30), TimeSpan.FromMilliseconds(-2))), "-2 ms"),
        .. Accepted(CreateTimerId, c => c.Own(c.Wheel().CreateTimer(_ => { }, null, TimeSpan.FromMilliseconds(-1.9), TimeSpan.FromMilliseconds(-1.9))), "-1.9 ms"),
    ];

    private const string CreateTimerId = "M:Scheduler.Timers.TimerWheel.CreateTimer(System.Threading.TimerCallback,System.Object,System.TimeSpan,System.TimeSpan)";

    private static IPEndPoint Loopback => new(IPAddress.Loopback, 0);

    public static TheoryData<CaseId> RangeCases()
    {
        var data = new TheoryData<CaseId>();
        foreach (RangeCase c in s_ranges)
        {
            data.Add(new CaseId(c.Key));
        }

        return data;
    }

    [Theory]
    [MemberData(nameof(RangeCases))]
    public async Task Argument_out_of_its_documented_range_is_refused_and_its_edges_accepted(CaseId id)
    {
        RangeCase c = s_ranges.Single(r => r.Key == id.Key);
        await using var context = new SweepContext(resources);
        Exception? thrown;
        try
        {
            object? result = c.Call(context);
            context.OwnIfDisposable(result);

            // The library checks ranges before it returns a task (DelayAsync is no async method): a refusal is synchronous.
            thrown = result is Task { IsFaulted: true } task ? task.Exception!.InnerException : null;
        }
        catch (Exception e)
        {
            thrown = e;
        }

        string expected = c.ParamName is null ? "no exception" : $"{nameof(ArgumentOutOfRangeException)} (ParamName {c.ParamName})";
        Describe(thrown).Should().Be(expected, c.Key);
    }

    [Fact]
    public void Every_documented_range_has_its_rows()
    {
        // The library's XML documentation file, beside its assembly: each public member that documents
        // ArgumentOutOfRangeException needs a refused row here, and each row must name a public member.
        string path = Path.ChangeExtension(s_library.Location, ".xml");
        File.Exists(path).Should().BeTrue($"the library's documentation file {path} lists which members document a range");
        var publicIds = s_library.GetExportedTypes().SelectMany(PublicMembers).Select(DocId).ToHashSet();
        var documented = XDocument.Load(path).Descendants("member")
            .Where(m => m.Elements("exception").Any(e => (string?)e.Attribute("cref") == "T:System.ArgumentOutOfRangeException"))
            .Select(m => (string)m.Attribute("name")!)
            .Where(publicIds.Contains)
            .ToList();
        documented.Should().NotBeEmpty();

        var refused = s_ranges.Where(r => r.ParamName is not null).Select(r => r.MemberId).ToHashSet();
        var problems = documented.Where(id => !refused.Contains(id)).Select(id => $"{id}: documents ArgumentOutOfRangeException but has no refused row")
            .Concat(s_ranges.Where(r => !publicIds.Contains(r.MemberId)).Select(r => $"{r.Key}: names no public member"))
            .Distinct();
        string.Join(Environment.NewLine, problems).Should().BeEmpty("every documented range must be checked; extend s_ranges");
    }

    private static IEnumerable<MethodBase> PublicMembers(Type type) =>
        type.GetConstructors(BindingFlags.Public | BindingFlags.Instance)
            .Concat<MethodBase>(type.GetMethods(BindingFlags.Public | BindingFlags.Instance | BindingFlags.Static | BindingFlags.DeclaredOnly));

    /// <summary>The member's ID in the XML documentation file (<c>M:Namespace.Type.Method(ParamType,...)</c>).</summary>
    private static string DocId(MethodBase member)
    {
        string name = member is ConstructorInfo ? "#ctor" : member.Name;
        string[] parameters = member.GetParameters().Select(p => DocTypeName(p.ParameterType)).ToArray();
        string id = $"M:{DocTypeName(member.DeclaringType!)}.{name}";
        return parameters.Length == 0 ? id : $"{id}({string.Join(",", parameters)})";
    }

    private static string DocTypeName(Type type)
    {
        if (type.IsByRef)
        {
            return DocTypeName(type.GetElementType()!) + "@";
        }

        if (type.IsGenericParameter)
        {
            return (type.DeclaringMethod is null ? "`" : "``") + type.GenericParameterPosition;
        }

        if (type.IsGenericType && !type.IsGenericTypeDefinition)
        {
            string definition = type.GetGenericTypeDefinition().FullName!;
            var name = new StringBuilder(definition[..definition.IndexOf('`', StringComparison.Ordinal)]);
            return name.Append('{').AppendJoin(",", type.GetGenericArguments().Select(DocTypeName)).Append('}').ToString();
        }

        return type.FullName!.Replace('+', '.');
    }

    private static IEnumerable<RangeCase> Refused(string memberId, string paramName, Func<SweepContext, object?> call, string value) =>
        [new RangeCase($"{ShortName(memberId)}: {paramName} = {value} is refused", memberId, paramName, call)];

    private static IEnumerable<RangeCase> Accepted(string memberId, Func<SweepContext, object?> call, string value) =>
        [new RangeCase($"{ShortName(memberId)}: {value} is accepted", memberId, null, call)];

    private static IEnumerable<RangeCase> Option(string property, Action<WorkStealingTaskSchedulerOptions> set, string value, bool refused)
    {
        const string Constructor = "M:Scheduler.WorkStealingTaskScheduler.#ctor(Scheduler.WorkStealingTaskSchedulerOptions)";
        Func<SweepContext, object?> call = c =>
        {
            WorkStealingTaskSchedulerOptions options = NewOptions();
            set(options);
            return c.Own(new WorkStealingTaskScheduler(options));
        };
        return refused
            ? [new RangeCase($"WorkStealingTaskSchedulerOptions.{property} = {value} is refused", Constructor, property, call)]
            : [new RangeCase($"WorkStealingTaskSchedulerOptions.{property} = {value} is accepted", Constructor, null, call)];
    }

    private static object? Void(Action call)
    {
        call();
        return null;
    }

    private static string ShortName(string memberId)
    {
        string name = memberId[2..];
        int open = name.IndexOf('(', StringComparison.Ordinal);
        string member = open < 0 ? name : name[..open];
        int dot = member.LastIndexOf('.', member.LastIndexOf('.') - 1);
        return member[(dot + 1)..].Replace("`1", "<T>", StringComparison.Ordinal);
    }

    /// <summary>One call with a value at or beyond a documented edge; <see cref="ParamName"/> null when it must be accepted.</summary>
    private sealed record RangeCase(string Key, string MemberId, string? ParamName, Func<SweepContext, object?> Call);
}
