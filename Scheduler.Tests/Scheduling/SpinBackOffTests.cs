using System.Diagnostics;

namespace Scheduler.Tests.Scheduling;

/// <summary>
/// An idle worker's back-off from spinning under preemption (<see cref="SpinBackOff"/>), driven with made-up Stopwatch
/// timestamps so that each boundary is exact: when a stretch of polls is a cut, when a cut is isolated, how long the
/// pause after close cuts lasts.
/// </summary>
public sealed class SpinBackOffTests
{
    // An arbitrary moment far from zero: no boundary may depend on the clock's origin.
    private static readonly long T0 = 1000 * Stopwatch.Frequency;

    private static long Ms(long milliseconds) => milliseconds * Stopwatch.Frequency / 1000;

    /// <summary>A stretch long enough to be a cut, ending at <paramref name="now"/>.</summary>
    private static bool Cut(ref SpinBackOff backOff, long now) => backOff.TryCutStretch(now - SpinBackOff.PreemptedStretch - 1, now);

    /// <summary>A cut at <paramref name="now"/> that must be isolated: it pauses nothing, and the worker may spin at once.</summary>
    private static void IsolatedCut(ref SpinBackOff backOff, long now, string because)
    {
        Cut(ref backOff, now).Should().BeTrue();
        backOff.Suppression.Should().Be(0, because);
        backOff.IsSuppressed(now).Should().BeFalse(because);
    }

    /// <summary>Two cuts 1 ms apart: the first is isolated, the second is close and starts a 10 ms pause. Returns the second's time.</summary>
    private static long TwoCloseCuts(ref SpinBackOff backOff)
    {
        IsolatedCut(ref backOff, T0, "the first cut is isolated");
        Cut(ref backOff, T0 + Ms(1)).Should().BeTrue();
        backOff.Suppression.Should().Be(Ms(10), "the second cut came 1 ms after the first, with no spinning in between");
        return T0 + Ms(1);
    }

    /// <summary>Uncut stretches of 0.4 ms from <paramref name="from"/>, <paramref name="total"/> long in all. Returns their end.</summary>
    private static long Spin(ref SpinBackOff backOff, long from, long total)
    {
        long step = Ms(2) / 5;
        long now = from;
        for (long left = total; left > 0; left -= step)
        {
            long stretch = Math.Min(step, left);
            backOff.TryCutStretch(now, now + stretch).Should().BeFalse("a stretch of 0.4 ms or less is no cut");
            now += stretch;
        }

        return now;
    }

    [Fact]
    public void A_stretch_is_a_cut_only_when_it_took_longer_than_half_a_millisecond()
    {
        var backOff = new SpinBackOff();
        SpinBackOff.PreemptedStretch.Should().Be(Stopwatch.Frequency / 2000);

        backOff.TryCutStretch(T0, T0 + SpinBackOff.PreemptedStretch).Should().BeFalse("exactly half a millisecond is still spinning");
        backOff.TryCutStretch(T0, T0 + SpinBackOff.PreemptedStretch + 1).Should().BeTrue("longer, and the worker was mostly off the CPU");
    }

    [Fact]
    public void A_worker_never_cut_may_spin_and_its_first_cut_pauses_nothing()
    {
        var backOff = new SpinBackOff();
        backOff.IsSuppressed(0).Should().BeFalse();
        backOff.IsSuppressed(T0).Should().BeFalse();

        IsolatedCut(ref backOff, T0, "one preemption says little: on a shared machine they come now and then");
    }

    [Fact]
    public void A_close_cut_pauses_spinning_for_exactly_ten_milliseconds()
    {
        var backOff = new SpinBackOff();
        long cutAt = TwoCloseCuts(ref backOff);

        backOff.IsSuppressed(cutAt).Should().BeTrue();
        backOff.IsSuppressed(cutAt + Ms(10) - 1).Should().BeTrue();
        backOff.IsSuppressed(cutAt + Ms(10)).Should().BeFalse("the pause is over");
    }

    [Fact]
    public void Each_further_close_cut_doubles_the_pause_up_to_a_second()
    {
        var backOff = new SpinBackOff();
        long now = TwoCloseCuts(ref backOff);
        var pauses = new List<long> { backOff.Suppression };
        for (int i = 0; i < 8; i++)
        {
            // Each cut comes as the previous pause ends: no spinning in between, no gap since the pause.
            now += backOff.Suppression;
            Cut(ref backOff, now).Should().BeTrue();
            pauses.Add(backOff.Suppression);
            backOff.IsSuppressed(now + backOff.Suppression - 1).Should().BeTrue();
            backOff.IsSuppressed(now + backOff.Suppression).Should().BeFalse();
        }

        pauses.Should().Equal(new long[] { 10, 20, 40, 80, 160, 320, 640, 1000, 1000 }.Select(Ms));
    }

    [Fact]
    public void Spinning_twenty_milliseconds_in_all_since_the_last_cut_makes_the_next_cut_isolated()
    {
        var backOff = new SpinBackOff();
        long now = Spin(ref backOff, TwoCloseCuts(ref backOff) + Ms(10), SpinBackOff.IsolatedCutSpin);
        SpinBackOff.IsolatedCutSpin.Should().Be(Ms(20));

        IsolatedCut(ref backOff, now, "the worker spun 20 ms since its previous cut: this one is isolated");
    }

    [Fact]
    public void A_cut_before_twenty_milliseconds_of_spinning_doubles_the_pause()
    {
        var backOff = new SpinBackOff();
        long now = Spin(ref backOff, TwoCloseCuts(ref backOff) + Ms(10), SpinBackOff.IsolatedCutSpin - 1);

        Cut(ref backOff, now).Should().BeTrue();

        backOff.Suppression.Should().Be(Ms(20), "one unit short of 20 ms of spinning, and well within a second of the pause's end");
        backOff.IsSuppressed(now + Ms(20) - 1).Should().BeTrue();
    }

    [Fact]
    public void Spinning_counts_only_since_the_last_cut()
    {
        // 15 ms before a close cut and 15 ms after it: 30 ms in all, but only 15 since the last cut.
        var backOff = new SpinBackOff();
        long now = Spin(ref backOff, TwoCloseCuts(ref backOff) + Ms(10), Ms(15));
        Cut(ref backOff, now).Should().BeTrue();
        backOff.Suppression.Should().Be(Ms(20));

        now = Spin(ref backOff, now + Ms(20), Ms(15));
        Cut(ref backOff, now).Should().BeTrue();

        backOff.Suppression.Should().Be(Ms(40), "the spinning before the previous cut does not count towards this one");
    }

    [Fact]
    public void A_cut_a_second_after_the_pause_ended_is_isolated()
    {
        var backOff = new SpinBackOff();
        long pauseEnd = TwoCloseCuts(ref backOff) + Ms(10);
        SpinBackOff.IsolatedCutGap.Should().Be(Stopwatch.Frequency);

        IsolatedCut(ref backOff, pauseEnd + Stopwatch.Frequency, "a second passed since the pause ended");
    }

    [Fact]
    public void The_second_counts_from_the_end_of_the_pause_not_from_the_cut_that_began_it()
    {
        // A second after the cut but 10 ms short of a second after its pause: a pause of a second must not make the
        // next cut look isolated.
        var backOff = new SpinBackOff();
        long pauseEnd = TwoCloseCuts(ref backOff) + Ms(10);

        Cut(ref backOff, pauseEnd + Stopwatch.Frequency - 1).Should().BeTrue();

        backOff.Suppression.Should().Be(Ms(20));
    }

    [Fact]
    public void After_an_isolated_cut_the_next_run_of_close_cuts_starts_again_from_ten_milliseconds()
    {
        var backOff = new SpinBackOff();
        long now = TwoCloseCuts(ref backOff) + Ms(10);
        Cut(ref backOff, now).Should().BeTrue();
        backOff.Suppression.Should().Be(Ms(20));

        now += Ms(20) + Stopwatch.Frequency;
        IsolatedCut(ref backOff, now, "a second passed since the pause ended");

        Cut(ref backOff, now + Ms(1)).Should().BeTrue();
        backOff.Suppression.Should().Be(Ms(10), "a new run of close cuts, not the old one's 40 ms");
    }

    [Theory]
    [InlineData(0, true, 0)]
    [InlineData(640, true, 0)]
    [InlineData(0, false, 10)]
    [InlineData(10, false, 20)]
    [InlineData(640, false, 1000)]
    [InlineData(1000, false, 1000)]
    public void An_isolated_cut_pauses_nothing_and_close_cuts_double_the_pause_from_ten_milliseconds_to_a_second(long previousMs, bool isolated, long expectedMs)
    {
        SpinBackOff.NextSuppression(Ms(previousMs), isolated).Should().Be(Ms(expectedMs));
    }
}
