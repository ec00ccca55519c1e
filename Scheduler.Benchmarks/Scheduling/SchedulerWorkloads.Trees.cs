namespace Scheduler.Benchmarks.Scheduling;

internal static partial class SchedulerWorkloads
{
    private static readonly Func<object?, long> s_skynetLeaf = static state => ((SkynetNode)state!).Number;
    private static readonly Func<object?, Task<long>> s_skynetInner = static state => SkynetInner((SkynetNode)state!);
    private static readonly Func<object?, Task<long>> s_fib = static state => ((FibNode)state!).Run();

    /// <summary>The sum skynet must return for <paramref name="leaves"/> leaves (0 + 1 + ... + leaves-1).</summary>
    public static long SkynetExpected(int leaves) => (long)leaves * (leaves - 1) / 2;

    /// <summary>
    /// skynet: a tree of tasks, <paramref name="fanOut"/> children per node, <paramref name="leaves"/> leaves
    /// (each leaf a task too); every inner node awaits its children and sums their numbers.
    /// </summary>
    public static Task<long> Skynet(TaskScheduler scheduler, int leaves, int fanOut)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(fanOut, 2);
        if (leaves < 1 || !IsPowerOf(leaves, fanOut))
        {
            throw new ArgumentOutOfRangeException(nameof(leaves), leaves, $"skynet needs a leaf count that is a power of the fan-out ({fanOut}).");
        }

        return SpawnSkynet(new SkynetNode(scheduler, 0, leaves, fanOut));
    }

    /// <summary>The expected fib(<paramref name="n"/>).</summary>
    public static long FibExpected(int n)
    {
        long a = 0, b = 1;
        for (int i = 0; i < n; i++)
        {
            (a, b) = (b, a + b);
        }

        return a;
    }

    /// <summary>fork_join: fib(<paramref name="n"/>) where every call spawns fib(n-1) as a task, computes fib(n-2) itself and awaits both.</summary>
    public static Task<long> ForkJoin(TaskScheduler scheduler, int n) =>
        Task.Factory.StartNew(s_fib, new FibNode(scheduler, n), CancellationToken.None, TaskCreationOptions.None, scheduler).Unwrap();

    private static Task<long> SpawnSkynet(SkynetNode node) =>
        node.Size == 1
            ? Task.Factory.StartNew(s_skynetLeaf, node, CancellationToken.None, TaskCreationOptions.None, node.Scheduler)
            : Task.Factory.StartNew(s_skynetInner, node, CancellationToken.None, TaskCreationOptions.None, node.Scheduler).Unwrap();

    private static async Task<long> SkynetInner(SkynetNode node)
    {
        int childSize = node.Size / node.FanOut;
        var children = new Task<long>[node.FanOut];
        for (int i = 0; i < children.Length; i++)
        {
            children[i] = SpawnSkynet(new SkynetNode(node.Scheduler, node.Number + ((long)i * childSize), childSize, node.FanOut));
        }

        long sum = 0;
        foreach (Task<long> child in children)
        {
            sum += await child;
        }

        return sum;
    }

    private static async Task<long> Fib(TaskScheduler scheduler, int n)
    {
        if (n < 2)
        {
            return n;
        }

        // The scheduler is named, as skynet names it, rather than read from TaskScheduler.Current: with a
        // SynchronizationContext on the workers, code resumed inline reads Current as Default.
        Task<long> left = Task.Factory.StartNew(s_fib, new FibNode(scheduler, n - 1), CancellationToken.None, TaskCreationOptions.None, scheduler).Unwrap();
        long right = await Fib(scheduler, n - 2);
        return await left + right;
    }

    private sealed record FibNode(TaskScheduler Scheduler, int N)
    {
        public Task<long> Run() => Fib(Scheduler, N);
    }

    private static bool IsPowerOf(int value, int radix)
    {
        while (value % radix == 0)
        {
            value /= radix;
        }

        return value == 1;
    }

    private sealed record SkynetNode(TaskScheduler Scheduler, long Number, int Size, int FanOut);
}
