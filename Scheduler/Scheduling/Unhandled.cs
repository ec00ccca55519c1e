using System.Runtime.ExceptionServices;

namespace Scheduler;

/// <summary>Where an exception goes that belongs to user code but surfaced on a thread that must not throw it.</summary>
internal static class Unhandled
{
    /// <summary>
    /// Raises <paramref name="exception"/> as an unhandled exception on a ThreadPool thread: what an exception escaping
    /// a ThreadPool work item or a <see cref="System.Threading.Timer"/> callback does (by default it terminates the
    /// process; a handler set with <c>ExceptionHandling.SetUnhandledExceptionHandler</c> sees it first). The thread that
    /// found it (a worker, a timer driver, the completing thread of a waker) keeps going.
    /// </summary>
    public static void Raise(Exception exception)
    {
        ExceptionDispatchInfo info = ExceptionDispatchInfo.Capture(exception);
        ThreadPool.UnsafeQueueUserWorkItem(static state => state.Throw(), info, preferLocal: false);
    }
}
