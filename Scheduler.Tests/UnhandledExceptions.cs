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

/// <summary>
/// Observes exceptions that go unhandled on ThreadPool threads (what a throwing System.Threading.Timer callback
/// produces). .NET 10's process-wide handler lets the test process survive them: only
/// a <see cref="DeliberateTestException"/> is marked handled, anything else still crashes the run as it should.
/// </summary>
internal static class UnhandledExceptions
{
    private static readonly ConcurrentQueue<Exception> s_seen = new();
    private static readonly Lazy<bool> s_installed = new(() =>
    {
        ExceptionHandling.SetUnhandledExceptionHandler(static exception =>
        {
            if (exception is DeliberateTestException)
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
}

