using System.Diagnostics;

namespace Scheduler;

/// <summary>
/// An idle worker's record of how its spin spells fare under preemption: whether a stretch of polls was mostly spent off
/// the CPU (a cut), whether a cut is isolated or one of a run, and until when the worker parks without spinning.
/// </summary>
/// <remarks>
/// <para>The clock is passed in (Stopwatch timestamps), so tests drive every boundary with made-up times; the worker
/// passes <see cref="Stopwatch.GetTimestamp"/>. Why the worker watches its spells at all, and why only cuts that keep
/// coming pause spinning: <c>WorkStealingTaskScheduler.Spinning.cs</c> and docs/scheduling.md.</para>
/// <para>Owner thread only; the struct lives in a field of its worker and is used by reference only.</para>
/// </remarks>
internal struct SpinBackOff
{
    /// <summary>A stretch of polls that took longer than this was mostly off the CPU: 0.5 ms (64 polls take ~13 µs).</summary>
    public static readonly long PreemptedStretch = Stopwatch.Frequency / 2000;

    /// <summary>A cut is isolated when the worker spun this long in all since the previous cut: 20 ms.</summary>
    public static readonly long IsolatedCutSpin = Stopwatch.Frequency / 50;

    /// <summary>A cut is isolated, too, when this long has passed since the end of the previous pause: a second.</summary>
    public static readonly long IsolatedCutGap = Stopwatch.Frequency;

    /// <summary>The pause after the first of a run of close cuts (10 ms); each further one doubles it, up to <see cref="MaxSuppression"/>.</summary>
    public static readonly long MinSuppression = Stopwatch.Frequency / 100;

    /// <summary>The longest pause: a second.</summary>
    public static readonly long MaxSuppression = Stopwatch.Frequency;

    // Until when the worker parks without spinning (the moment of the last cut when that one was isolated), and the
    // current length of that pause.
    private long _suppressedUntil;
    private long _suppression;

    // Time spent spinning (whole stretches that were not cut) since the last cut. Before the first cut: as if the
    // worker had spun for ever, so that the first cut is isolated.
    private long _spinSinceCut;

    /// <summary>A worker that has never been cut short: it may spin, and its first cut is isolated.</summary>
    public SpinBackOff() => _spinSinceCut = long.MaxValue / 2;

    /// <summary>The current pause's length (0 after an isolated cut). For tests and diagnostics.</summary>
    public readonly long Suppression => _suppression;

    /// <summary>
    /// How long a worker skips spinning after a cut: nothing after an isolated one, else <see cref="MinSuppression"/>
    /// after the first of a run and twice the previous pause for each further one, up to <see cref="MaxSuppression"/>.
    /// </summary>
    public static long NextSuppression(long previous, bool isolated) =>
        isolated ? 0 : Math.Clamp(previous * 2, MinSuppression, MaxSuppression);

    /// <summary>True while a run of close cuts has the worker park without spinning.</summary>
    public readonly bool IsSuppressed(long now) => now < _suppressedUntil;

    /// <summary>
    /// Ends a stretch of polls that began at <paramref name="stretchStart"/>. Returns true when it took so long that the
    /// worker was mostly preempted: the spell is cut, and a pause may begin. Otherwise the stretch counts as spinning.
    /// </summary>
    public bool TryCutStretch(long stretchStart, long now)
    {
        long stretch = now - stretchStart;
        if (stretch > PreemptedStretch)
        {
            OnCut(now);
            return true;
        }

        _spinSinceCut += stretch;
        return false;
    }

    private void OnCut(long now)
    {
        // The gap counts from the end of the previous pause: a pause of a second must not make the next cut look isolated.
        bool isolated = _spinSinceCut >= IsolatedCutSpin || now - _suppressedUntil >= IsolatedCutGap;
        _suppression = NextSuppression(_suppression, isolated);
        _spinSinceCut = 0;
        _suppressedUntil = now + _suppression;
    }
}
