using System.Collections.Concurrent;
using System.Threading.Tasks.Sources;
using Scheduler.Sources;
using Scheduler.Tests.Scheduling;
using Xunit.Abstractions;

namespace Scheduler.Tests.Sources;

/// <summary>
/// A continuation captured with a <see cref="SynchronizationContext"/> goes to its <c>Post</c>. When <c>Post</c>
/// throws, the waker must tell a context that refused (the continuation never ran: it still must, elsewhere) from one
/// that ran it inline and let its exception out (it ran: never run it again), and from one that accepted it for
/// another thread and threw anyway (it runs there, sooner or later: exactly one of the two may run it).
/// </summary>
public sealed class ContextPostTests(ITestOutputHelper output)
{
    [Fact]
    public async Task A_context_that_refuses_the_post_still_gets_the_continuation_run_once_on_the_ThreadPool()
    {
        var continuation = new CountedContinuation();
        bool onThreadPool = false;
        PooledValueTaskSource<int> source = PooledValueTaskSource<int>.Rent();
        RegisterUnder(new ThrowingSynchronizationContext(runFirst: false), source, () =>
        {
            onThreadPool = Thread.CurrentThread.IsThreadPoolThread;
            continuation.Run();
        });

        source.TrySetResult(1).Should().BeTrue();

        await continuation.Ran.WithTimeout();
        onThreadPool.Should().BeTrue();
        await Task.Delay(100);
        continuation.Runs.Should().Be(1);
    }

    [Fact]
    public async Task A_continuation_the_context_ran_inline_and_that_threw_is_not_run_again_and_goes_unhandled()
    {
        using UnhandledExceptions.Tolerated unhandled = UnhandledExceptions.Tolerate(e => e is ContinuationFailure);
        var continuation = new CountedContinuation();
        PooledValueTaskSource<int> source = PooledValueTaskSource<int>.Rent();
        RegisterUnder(new ThrowingSynchronizationContext(runFirst: true), source, () =>
        {
            continuation.Run();
            throw new ContinuationFailure();
        });

        // The completing thread (here the test's; a reactor or a timer driver in life) sees nothing thrown.
        source.TrySetResult(1).Should().BeTrue();

        await SchedulerTestHelpers.WaitUntilAsync(() => unhandled.Seen);
        unhandled.Seen.Should().BeTrue("the continuation's exception goes where one escaping a ThreadPool work item goes");
        await Task.Delay(200); // a second run, if queued, has had time to happen
        continuation.Runs.Should().Be(1, "the continuation ran once, inline in Post; queueing it again would run it twice");
    }

    [Fact]
    public async Task A_continuation_a_foreign_scheduler_ran_inline_before_QueueTask_threw_is_not_run_again()
    {
        // What StartNew throws when QueueTask fails after running the task: the TPL tries to fault a task that already
        // finished, and .NET 10 ends up throwing InvalidCastException from RunContinuations instead of the documented
        // TaskSchedulerException. Either way it must surface, once.
        using UnhandledExceptions.Tolerated unhandled = UnhandledExceptions.Tolerate(e => e is TaskSchedulerException { InnerException: SchedulerFailure } or InvalidCastException);
        var continuation = new CountedContinuation();
        var scheduler = new RunsThenThrowsTaskScheduler();
        PooledValueTaskSource<int> source = PooledValueTaskSource<int>.Rent();
        await Task.Factory.StartNew(
            // Inline on the test's thread, whose SynchronizationContext would take precedence: registered without it,
            // the await captures the scheduler.
            () => RegisterUnder(null, source, continuation.Run),
            CancellationToken.None,
            TaskCreationOptions.None,
            scheduler);

        scheduler.ThrowAfterRunning = true;
        source.TrySetResult(1).Should().BeTrue();

        await SchedulerTestHelpers.WaitUntilAsync(() => unhandled.Seen);
        unhandled.Seen.Should().BeTrue("the scheduler's failure is not lost");
        await Task.Delay(200); // a second run, if queued, has had time to happen
        continuation.Runs.Should().Be(1, "the scheduler ran the continuation before it threw; queueing it again would run it twice");
    }

    [Theory]
    [InlineData(false, false)]
    [InlineData(false, true)]
    [InlineData(true, false)]
    [InlineData(true, true)]
    public async Task A_context_that_accepts_the_post_for_another_thread_and_then_throws_runs_the_continuation_once_and_reports_the_failure(
        bool detachedCore, bool runsBeforePostThrows)
    {
        using UnhandledExceptions.Tolerated reported = UnhandledExceptions.Tolerate(e => e is PostFailure);
        using UnhandledExceptions.Tolerated secondInvoke = UnhandledExceptions.Tolerate(IsNoContinuationDue);
        using var context = new AcceptsThenThrowsSynchronizationContext(runsBeforePostThrows);
        var continuation = new CountedContinuation();
        var waker = new ProbeWaker(detachedCore);
        RegisterUnder(context, waker, continuation.Run);

        // The completing thread sees nothing thrown, whichever runner gets the continuation.
        waker.Core.TrySetResult(1).Should().BeTrue();

        // Ran either inside Post, on the context's thread, or (Post having thrown) by the fallback; in that case the
        // context's thread gets its callback only now, late.
        await continuation.Ran.WithTimeout();
        context.Release();
        context.WaitForCallback(SchedulerTestHelpers.Timeout).Should().BeTrue();
        await SchedulerTestHelpers.WaitUntilAsync(() => reported.Seen);

        // The failure is reported by whichever runner lost the claim, after it lost: nothing can run any more.
        continuation.Runs.Should().Be(1, "the context's thread and the fallback must not both run the continuation");
        context.CallbackFailure.Should().BeNull("the context's callback must not find the continuation taken and throw");
        secondInvoke.Seen.Should().BeFalse("nobody may invoke a continuation that already ran");
        reported.SeenCount.Should().Be(1, "Post accepted the continuation and still threw: that failure is the context's bug, reported once");
    }

    [Fact]
    public async Task A_late_callback_of_a_context_that_threw_never_runs_the_next_operations_continuation()
    {
        using UnhandledExceptions.Tolerated reported = UnhandledExceptions.Tolerate(e => e is PostFailure);
        using var first = new AcceptsThenThrowsSynchronizationContext(runsBeforePostThrows: false);
        var waker = new ProbeWaker(detachedCore: false);
        var firstRan = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        short firstVersion = waker.Core.Version;
        RegisterUnder(first, waker, () => firstRan.TrySetResult());
        waker.Core.TrySetResult(1).Should().BeTrue();

        // Post threw, so the fallback ran the continuation; the context still holds its callback for that dispatch.
        await firstRan.Task.WithTimeout();
        waker.Core.GetResult(firstVersion).Should().Be(1);
        waker.Core.TryReset(firstVersion).Should().BeTrue();

        // The same core's next operation, dispatched to a context that holds its post.
        var second = new HeldPostsSynchronizationContext();
        int secondRuns = 0;
        SynchronizationContext? secondRanUnder = null;
        RegisterUnder(second, waker, () =>
        {
            Interlocked.Increment(ref secondRuns);
            secondRanUnder = SynchronizationContext.Current;
        });
        waker.Core.TrySetResult(2).Should().BeTrue();
        second.Held.Should().Be(1);

        first.Release();
        first.WaitForCallback(SchedulerTestHelpers.Timeout).Should().BeTrue();
        first.CallbackFailure.Should().BeNull();
        Volatile.Read(ref secondRuns).Should().Be(0, "the first dispatch's late callback must not run the second operation's continuation");

        second.RunAll();
        Volatile.Read(ref secondRuns).Should().Be(1);
        secondRanUnder.Should().BeSameAs(second, "the second continuation runs where it was posted");
        await SchedulerTestHelpers.WaitUntilAsync(() => reported.Seen);
        reported.SeenCount.Should().Be(1);
    }

    [Fact]
    public void A_context_that_runs_a_posted_callback_twice_gets_an_exception_and_the_next_dispatch_still_runs_its_continuation()
    {
        // A buggy context calls the callback again after the first call ran the continuation and the hand-off went back
        // to its pool. On this thread the next dispatch rents that same hand-off (the pool's thread cache): the second
        // call must leave it untouched, or that dispatch's own callback finds it claimed and its continuation never runs.
        var twice = new RunsPostsTwiceSynchronizationContext();
        var waker = new ProbeWaker(detachedCore: false);
        short firstVersion = waker.Core.Version;
        int firstRuns = 0;
        RegisterUnder(twice, waker, () => firstRuns++);
        waker.Core.TrySetResult(1).Should().BeTrue();
        twice.RunHeldTwice();
        firstRuns.Should().Be(1);
        waker.Core.GetResult(firstVersion).Should().Be(1);
        waker.Core.TryReset(firstVersion).Should().BeTrue();

        var held = new HeldPostsSynchronizationContext();
        int secondRuns = 0;
        RegisterUnder(held, waker, () => secondRuns++);
        waker.Core.TrySetResult(2).Should().BeTrue();
        held.RunAll();

        secondRuns.Should().Be(1, "the next dispatch's continuation runs once, from its own callback");
        twice.SecondCallFailure.Should().BeOfType<InvalidOperationException>("a callback run twice is the context's bug, and it is told so");
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task A_continuation_a_foreign_scheduler_ran_on_another_thread_before_QueueTask_threw_is_not_run_again(bool detachedCore)
    {
        // What .NET 10's StartNew throws then (the task already ran when the TPL tries to fault it): see the inline test.
        using UnhandledExceptions.Tolerated reported = UnhandledExceptions.Tolerate(e => e is TaskSchedulerException { InnerException: SchedulerFailure } or InvalidCastException);
        using UnhandledExceptions.Tolerated secondInvoke = UnhandledExceptions.Tolerate(IsNoContinuationDue);
        var scheduler = new RunsElsewhereThenThrowsTaskScheduler();
        var continuation = new CountedContinuation();
        var waker = new ProbeWaker(detachedCore);
        await RegisterOnScheduler(scheduler, waker, continuation.Run);

        scheduler.ThrowAfterRunning = true;
        waker.Core.TrySetResult(1).Should().BeTrue();

        await continuation.Ran.WithTimeout();
        await SchedulerTestHelpers.WaitUntilAsync(() => reported.Seen);
        continuation.Runs.Should().Be(1, "the scheduler's thread ran the continuation before QueueTask threw; the fallback must not run it again");
        secondInvoke.Seen.Should().BeFalse("nobody may invoke a continuation that already ran");
        reported.SeenCount.Should().Be(1, "the scheduler's failure is not lost");
    }

    [Fact]
    public async Task A_task_a_foreign_scheduler_stored_before_QueueTask_threw_never_runs_so_the_fallback_runs_the_continuation_once()
    {
        // .NET 10's TPL faults a task whose QueueTask threw, and TryExecuteTask refuses a completed task: for a Task,
        // "accepted, then threw" is a refusal, whatever the scheduler does with the task afterwards.
        var continuation = new CountedContinuation();
        var scheduler = new StoresThenThrowsTaskScheduler();
        var waker = new ProbeWaker(detachedCore: true);
        await RegisterOnScheduler(scheduler, waker, continuation.Run);

        scheduler.StoreAndThrow = true;
        waker.Core.TrySetResult(1).Should().BeTrue();
        await continuation.Ran.WithTimeout();

        scheduler.Stored.Should().NotBeNull();
        scheduler.Stored!.IsFaulted.Should().BeTrue();
        bool ranLater = await Task.Run(() => scheduler.RunStored());
        ranLater.Should().BeFalse("the TPL never runs a task whose QueueTask threw");
        continuation.Runs.Should().Be(1);
    }

    [Fact]
    public async Task A_context_racing_its_own_callback_against_a_throwing_Post_runs_every_continuation_exactly_once()
    {
        const int Rounds = 5_000;
        using UnhandledExceptions.Tolerated reported = UnhandledExceptions.Tolerate(e => e is PostFailure);
        using UnhandledExceptions.Tolerated secondInvoke = UnhandledExceptions.Tolerate(IsNoContinuationDue);
        using var context = new RacingThrowingSynchronizationContext();
        int[] runs = new int[Rounds];
        int continuationFailures = 0;
        int ranByContext = 0;
        using var ranOnce = new SemaphoreSlim(0);
        for (int round = 0; round < Rounds; round++)
        {
            // Pooled sources: a core is reused across rounds while earlier rounds' losing callbacks may still be in flight.
            PooledValueTaskSource<int> source = PooledValueTaskSource<int>.Rent();
            short version = source.Version;
            int thisRound = round;
            RegisterUnder(context, source, () =>
            {
                try
                {
                    ((IValueTaskSource<int>)source).GetResult(version);
                }
                catch (InvalidOperationException)
                {
                    // A second run of this continuation (the source was already read and pooled), or a run of it as
                    // a later round's (the wrong result): counted, never let out on the ThreadPool.
                    Interlocked.Increment(ref continuationFailures);
                }

                if (RacingThrowingSynchronizationContext.InCallback)
                {
                    Interlocked.Increment(ref ranByContext);
                }

                if (Interlocked.Increment(ref runs[thisRound]) == 1)
                {
                    ranOnce.Release();
                }
            });
            source.TrySetResult(round).Should().BeTrue();
            (await ranOnce.WaitAsync(SchedulerTestHelpers.Timeout)).Should().BeTrue($"round {round}'s continuation must run");
        }

        await SchedulerTestHelpers.WaitUntilAsync(() => context.CallbacksRun == Rounds && reported.SeenCount >= Rounds);
        output.WriteLine($"the context's callback ran {ranByContext} of {Rounds} continuations, the fallback the rest");
        runs.Should().OnlyContain(count => count == 1, "every round's continuation runs exactly once");
        Volatile.Read(ref continuationFailures).Should().Be(0);
        secondInvoke.Seen.Should().BeFalse();
        context.CallbacksRun.Should().Be(Rounds);
        context.CallbackFailures.Should().Be(0);
        reported.SeenCount.Should().Be(Rounds, "every Post accepted its callback and threw: each failure is reported once");
    }

    private static void RegisterUnder(SynchronizationContext? context, IValueTaskSource<int> source, Action continuation)
    {
        SynchronizationContext? previous = SynchronizationContext.Current;
        SynchronizationContext.SetSynchronizationContext(context);
        try
        {
            short version = ((PooledValueTaskSource<int>)source).Version;
            source.OnCompleted(static state => ((Action)state!)(), continuation, version, ValueTaskSourceOnCompletedFlags.UseSchedulingContext);
        }
        finally
        {
            SynchronizationContext.SetSynchronizationContext(previous);
        }
    }

    /// <summary>Registers <paramref name="continuation"/> on <paramref name="waker"/> from a task of <paramref name="scheduler"/> (its captured target).</summary>
    private static Task RegisterOnScheduler(TaskScheduler scheduler, ProbeWaker waker, Action continuation) =>
        Task.Factory.StartNew(() => RegisterUnder(null, waker, continuation), CancellationToken.None, TaskCreationOptions.None, scheduler);

    private static void RegisterUnder(SynchronizationContext? context, ProbeWaker waker, Action continuation)
    {
        SynchronizationContext? previous = SynchronizationContext.Current;
        SynchronizationContext.SetSynchronizationContext(context);
        try
        {
            waker.Core.OnCompleted(static state => ((Action)state!)(), continuation, waker.Core.Version, ValueTaskSourceOnCompletedFlags.UseSchedulingContext);
        }
        finally
        {
            SynchronizationContext.SetSynchronizationContext(previous);
        }
    }

    /// <summary>A continuation that counts its runs and signals the first.</summary>
    private sealed class CountedContinuation
    {
        private readonly TaskCompletionSource _ran = new(TaskCreationOptions.RunContinuationsAsynchronously);
        private int _runs;

        public int Runs => Volatile.Read(ref _runs);

        public Task Ran => _ran.Task;

        public void Run()
        {
            Interlocked.Increment(ref _runs);
            _ran.TrySetResult();
        }
    }

    /// <summary>What <see cref="WakerCore{TResult}.InvokeContinuation"/> throws when a continuation is run a second time.</summary>
    private static bool IsNoContinuationDue(Exception exception) =>
        exception is InvalidOperationException && exception.Message.StartsWith("No continuation is due", StringComparison.Ordinal);

    /// <summary>
    /// A waker whose core queues the waker itself (the allocation-free form, whose <c>InvokeContinuation</c> refuses a
    /// continuation already taken) or, default-initialised, a detached copy of the continuation (which would run again).
    /// </summary>
    private sealed class ProbeWaker : IThreadPoolWorkItem
    {
        public WakerCore<int> Core;

        public ProbeWaker(bool detachedCore) => Core = detachedCore ? default : new WakerCore<int>(this);

        void IThreadPoolWorkItem.Execute() => Core.InvokeContinuation();
    }

    private sealed class PostFailure() : Exception("this context accepted the post and threw anyway");

    // Not a DeliberateTestException: those are absorbed before a Tolerate scope counts them.
    private sealed class ContinuationFailure() : Exception("a continuation that throws");

    private sealed class SchedulerFailure() : Exception("this scheduler fails after running the task");

    /// <summary>Holds its posts; <see cref="RunHeldTwice"/> calls each callback twice in a row (a buggy context), recording what the second call threw.</summary>
    private sealed class RunsPostsTwiceSynchronizationContext : SynchronizationContext
    {
        private readonly Queue<(SendOrPostCallback Callback, object? State)> _posts = new();

        public Exception? SecondCallFailure { get; private set; }

        public override void Post(SendOrPostCallback d, object? state) => _posts.Enqueue((d, state));

        public override SynchronizationContext CreateCopy() => this;

        public void RunHeldTwice()
        {
            while (_posts.TryDequeue(out (SendOrPostCallback Callback, object? State) post))
            {
                post.Callback(post.State);
                try
                {
                    post.Callback(post.State);
                }
                catch (Exception e)
                {
                    SecondCallFailure = e;
                }
            }
        }
    }

    /// <summary>Runs every task inline in <c>QueueTask</c>, then (once told) throws.</summary>
    private sealed class RunsThenThrowsTaskScheduler : TaskScheduler
    {
        public bool ThrowAfterRunning { get; set; }

        protected override void QueueTask(Task task)
        {
            TryExecuteTask(task);
            if (ThrowAfterRunning)
            {
                throw new SchedulerFailure();
            }
        }

        protected override bool TryExecuteTaskInline(Task task, bool taskWasPreviouslyQueued) => TryExecuteTask(task);

        protected override IEnumerable<Task>? GetScheduledTasks() => [];
    }

    /// <summary>In normal mode runs each task on a thread of its own; told to, runs it there and waits for it, then throws.</summary>
    private sealed class RunsElsewhereThenThrowsTaskScheduler : TaskScheduler
    {
        public bool ThrowAfterRunning { get; set; }

        protected override void QueueTask(Task task)
        {
            var runner = new Thread(() => TryExecuteTask(task)) { IsBackground = true };
            runner.Start();
            if (ThrowAfterRunning)
            {
                runner.Join(SchedulerTestHelpers.Timeout);
                throw new SchedulerFailure();
            }
        }

        protected override bool TryExecuteTaskInline(Task task, bool taskWasPreviouslyQueued) => false;

        protected override IEnumerable<Task>? GetScheduledTasks() => [];
    }

    /// <summary>In normal mode runs each task on the ThreadPool; told to, stores the task for later and throws.</summary>
    private sealed class StoresThenThrowsTaskScheduler : TaskScheduler
    {
        public bool StoreAndThrow { get; set; }

        public Task? Stored { get; private set; }

        public bool RunStored() => TryExecuteTask(Stored!);

        protected override void QueueTask(Task task)
        {
            if (StoreAndThrow)
            {
                Stored = task;
                throw new SchedulerFailure();
            }

            ThreadPool.UnsafeQueueUserWorkItem(_ => TryExecuteTask(task), null);
        }

        protected override bool TryExecuteTaskInline(Task task, bool taskWasPreviouslyQueued) => false;

        protected override IEnumerable<Task>? GetScheduledTasks() => [];
    }

    /// <summary>
    /// A context for one post, whose <c>Post</c> accepts the callback (hands it to a thread of its own) and then throws
    /// anyway. The callback runs there before <c>Post</c> throws (<c>Post</c> waits for it), or only after
    /// <see cref="Release"/>, so after <c>Post</c> has thrown. Anything the callback throws is kept, not let out.
    /// </summary>
    private sealed class AcceptsThenThrowsSynchronizationContext(bool runsBeforePostThrows) : SynchronizationContext, IDisposable
    {
        private readonly ManualResetEventSlim _release = new(initialState: runsBeforePostThrows);
        private readonly ManualResetEventSlim _callbackDone = new();
        private Exception? _callbackFailure;
        private bool _posted;

        public Exception? CallbackFailure => Volatile.Read(ref _callbackFailure);

        public override void Post(SendOrPostCallback d, object? state)
        {
            _posted = true;
            var thread = new Thread(() =>
            {
                if (_release.Wait(SchedulerTestHelpers.Timeout))
                {
                    try
                    {
                        d(state);
                    }
                    catch (Exception exception)
                    {
                        Volatile.Write(ref _callbackFailure, exception);
                    }
                }

                _callbackDone.Set();
            })
            { IsBackground = true };
            thread.Start();
            if (runsBeforePostThrows)
            {
                _callbackDone.Wait(SchedulerTestHelpers.Timeout);
            }

            throw new PostFailure();
        }

        public override SynchronizationContext CreateCopy() => this;

        public void Release() => _release.Set();

        public bool WaitForCallback(TimeSpan timeout) => _callbackDone.Wait(timeout);

        public void Dispose()
        {
            _release.Set();
            if (_posted)
            {
                _callbackDone.Wait(SchedulerTestHelpers.Timeout);
            }

            _release.Dispose();
            _callbackDone.Dispose();
        }
    }

    /// <summary>
    /// A context whose <c>Post</c> hands the callback to its own thread and throws at once: the callback and the
    /// waker's fallback race. That thread polls without sleeping and waits a varying while before each callback, so
    /// that either side wins in a good share of the rounds.
    /// </summary>
    private sealed class RacingThrowingSynchronizationContext : SynchronizationContext, IDisposable
    {
        [ThreadStatic]
        private static bool t_inCallback;

        private readonly ConcurrentQueue<(SendOrPostCallback Callback, object? State)> _posts = new();
        private readonly Thread _runner;
        private volatile bool _disposed;
        private int _posted;
        private int _taken;
        private int _callbacksRun;
        private int _callbackFailures;

        public RacingThrowingSynchronizationContext()
        {
            _runner = new Thread(RunPosts) { IsBackground = true, Name = "Racing context" };
            _runner.Start();
        }

        /// <summary>Whether the calling thread is running a callback of such a context (else the fallback runs it).</summary>
        public static bool InCallback => t_inCallback;

        public int CallbacksRun => Volatile.Read(ref _callbacksRun);

        public int CallbackFailures => Volatile.Read(ref _callbackFailures);

        public override void Post(SendOrPostCallback d, object? state)
        {
            int post = Interlocked.Increment(ref _posted);
            _posts.Enqueue((d, state));

            // Every other post waits until the runner has picked the callback up (bounded: the runner may be starved
            // on a loaded machine), so that the two sides really run at the same time in those rounds.
            if (post % 2 == 0)
            {
                var waiting = new SpinWait();
                long deadline = Environment.TickCount64 + 1_000;
                while (Volatile.Read(ref _taken) < post && Environment.TickCount64 < deadline)
                {
                    waiting.SpinOnce(sleep1Threshold: -1);
                }
            }

            throw new PostFailure();
        }

        public override SynchronizationContext CreateCopy() => this;

        public void Dispose()
        {
            _disposed = true;
            _runner.Join(SchedulerTestHelpers.Timeout);
        }

        private void RunPosts()
        {
            t_inCallback = true;
            var idle = new SpinWait();
            int taken = 0;
            while (!_disposed)
            {
                if (!_posts.TryDequeue(out (SendOrPostCallback Callback, object? State) post))
                {
                    idle.SpinOnce(sleep1Threshold: -1);
                    continue;
                }

                idle.Reset();
                Volatile.Write(ref _taken, ++taken);
                Thread.SpinWait(1 << (taken % 8));
                try
                {
                    post.Callback(post.State);
                }
                catch (Exception)
                {
                    Interlocked.Increment(ref _callbackFailures);
                }
                finally
                {
                    Interlocked.Increment(ref _callbacksRun);
                }
            }
        }
    }

    /// <summary>A context whose <c>Post</c> throws, after running the callback inline (<c>runFirst</c>) or without running it.</summary>
    private sealed class ThrowingSynchronizationContext(bool runFirst) : SynchronizationContext
    {
        public override void Post(SendOrPostCallback d, object? state)
        {
            if (runFirst)
            {
                d(state);
            }

            throw new InvalidOperationException("this context takes no posts");
        }
    }
}
