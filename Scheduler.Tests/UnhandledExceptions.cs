using System.Collections.Concurrent;
using System.Runtime.ExceptionServices;

namespace Scheduler.Tests;

/// <summary>Base of the exceptions tests throw on purpose from fire-and-forget callbacks (they go unhandled by design).</summary>
internal abstract class DeliberateTestException : Exception
{
    protected DeliberateTestException(string message)
        : base(message)
    {
    }

    protected DeliberateTestException()
    {
    }

    protected DeliberateTestException(string message, Exception innerException)
        : base(message, innerException)
    {
    }
}

/// <summary>Tells exceptions tests raise on purpose from the ones a library fault raises.</summary>
internal static class TestExceptions
{
    /// <summary>
    /// True when <paramref name="exception"/> or one it wraps is of a type of the test assembly (a deliberate one among
    /// them): another test's doing. For process-wide observations (<see cref="TaskScheduler.UnobservedTaskException"/>),
    /// which see every test running at the time.
    /// </summary>
    public static bool InvolveATest(Exception exception)
    {
        for (Exception? current = exception; current is not null; current = current.InnerException)
        {
            if (current is DeliberateTestException || current.GetType().Assembly == typeof(TestExceptions).Assembly)
            {
                return true;
            }

            if (current is AggregateException aggregate && aggregate.InnerExceptions.Any(InvolveATest))
            {
                return true;
            }
        }

        return false;
    }
}

/// <summary>
/// Observes exceptions that go unhandled on ThreadPool threads (what a throwing System.Threading.Timer callback
/// produces). .NET 10's process-wide handler lets the test process survive them: only
/// a <see cref="DeliberateTestException"/> is marked handled, anything else still crashes the run as it should.
/// </summary>
internal static class UnhandledExceptions
{
    private static readonly ConcurrentQueue<Exception> s_seen = new();
    private static readonly ConcurrentDictionary<Tolerated, Func<Exception, bool>> s_tolerated = new();
    private static readonly Lazy<bool> s_installed = new(() =>
    {
        ExceptionHandling.SetUnhandledExceptionHandler(static exception =>
        {
            if (exception is DeliberateTestException || IsTolerated(exception))
            {
                s_seen.Enqueue(exception);
                return true;
            }

            return false;
        });
        return true;
    });

    public static void EnsureInstalled() => _ = s_installed.Value;

    public static bool Contains(Exception exception) => s_seen.Contains(exception);

    /// <summary>
    /// Until disposed, exceptions matching <paramref name="match"/> are counted by the returned scope instead of
    /// crashing the run: for tests of a bug whose symptom is an unhandled exception (the test then asserts none was seen).
    /// </summary>
    public static Tolerated Tolerate(Func<Exception, bool> match)
    {
        EnsureInstalled();
        var scope = new Tolerated(match);
        s_tolerated[scope] = match;
        return scope;
    }

    private static bool IsTolerated(Exception exception)
    {
        bool tolerated = false;
        foreach (Tolerated scope in s_tolerated.Keys)
        {
            if (scope.Match(exception))
            {
                scope.Record(exception);
                tolerated = true;
            }
        }

        return tolerated;
    }

    /// <summary>A scope of <see cref="Tolerate"/>: counts the matching exceptions that went unhandled while it was open.</summary>
    internal sealed class Tolerated(Func<Exception, bool> match) : IDisposable
    {
        private const int KeptForReport = 4;
        private readonly ConcurrentQueue<Exception> _kept = new();
        internal int SeenCount;

        public Func<Exception, bool> Match { get; } = match;

        public bool Seen => Volatile.Read(ref SeenCount) > 0;

        /// <summary>The first few matching exceptions, type, message and stack, for a failing assertion's message.</summary>
        public string Report => string.Join(Environment.NewLine + "----" + Environment.NewLine, _kept.Select(static e => e.ToString()));

        internal void Record(Exception exception)
        {
            if (Interlocked.Increment(ref SeenCount) <= KeptForReport)
            {
                _kept.Enqueue(exception);
            }
        }

        public void Dispose() => s_tolerated.TryRemove(this, out _);
    }
}
