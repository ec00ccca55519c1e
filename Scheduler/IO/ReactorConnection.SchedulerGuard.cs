using System.IO.Pipelines;

namespace Scheduler.IO;

public sealed partial class ReactorConnection
{
    /// <summary>
    /// The options with every scheduler the connection cannot vouch for wrapped in a <see cref="GuardedScheduler"/>; the
    /// options themselves when there is none (the reactor's own scheduler, <see cref="PipeScheduler.Inline"/>,
    /// <see cref="PipeScheduler.ThreadPool"/>): nothing is added to the default path.
    /// </summary>
    private PipeOptions GuardSchedulers(PipeOptions options)
    {
        PipeScheduler reader = Guard(options.ReaderScheduler);
        PipeScheduler writer = Guard(options.WriterScheduler);
        return ReferenceEquals(reader, options.ReaderScheduler) && ReferenceEquals(writer, options.WriterScheduler)
            ? options
            : new PipeOptions(
                options.Pool,
                reader,
                writer,
                options.PauseWriterThreshold,
                options.ResumeWriterThreshold,
                options.MinimumSegmentSize,
                options.UseSynchronizationContext);
    }

    private PipeScheduler Guard(PipeScheduler scheduler) =>
        ReferenceEquals(scheduler, PipeScheduler.Inline) || ReferenceEquals(scheduler, PipeScheduler.ThreadPool) || scheduler is WorkStealingPipeScheduler
            ? scheduler
            : new GuardedScheduler(this, scheduler);

    /// <summary>
    /// A user's <see cref="PipeScheduler"/>, kept from losing a continuation. System.IO.Pipelines takes a reader's or
    /// writer's continuation out of the pipe before it hands it to the scheduler, so a <c>Schedule</c> that throws
    /// dropped it: the application's <c>ReadAsync</c> or <c>FlushAsync</c>, or one of this connection's loops, never
    /// resumed (and <see cref="DisposeAsync"/> waited for that loop forever), while the exception went to whoever happened
    /// to trigger the schedule — often this connection's own loop, which took it for the application's. Here the
    /// continuation runs on the ThreadPool instead, and the connection aborts with the scheduler's exception (wrapped),
    /// which <see cref="Input"/> reports: the failure is this connection's, visible, and costs no other connection.
    /// A <c>Schedule</c> that throws is taken to have scheduled nothing.
    /// </summary>
    private sealed class GuardedScheduler(ReactorConnection connection, PipeScheduler inner) : PipeScheduler
    {
        public override void Schedule(Action<object?> action, object? state)
        {
            try
            {
                inner.Schedule(action, state);
            }
            catch (Exception e)
            {
                System.Threading.ThreadPool.UnsafeQueueUserWorkItem(action, state, preferLocal: false);
                connection.Abort(new InvalidOperationException(
                    $"The connection's PipeScheduler ({inner.GetType().FullName}) threw from Schedule; the connection was aborted and the callback ran on the ThreadPool.",
                    e));
            }
        }
    }
}
