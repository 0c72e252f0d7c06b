"""The SVG charts: accessible, escaped, within the CSP (no style attributes)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from jobs import charts

START = datetime(2026, 12, 1, tzinfo=UTC)
HOURS = [START + timedelta(hours=i) for i in range(24)]


def test_a_stacked_bar_chart_has_a_title_a_summary_axes_and_a_legend():
    svg = charts.stacked_bars(
        "Runs per hour", HOURS, timedelta(hours=1),
        [charts.Stack("succeeded", "s-succeeded", [3] * 24),
         charts.Stack("failed", "s-failed", [0] * 23 + [2])],
        "72 succeeded, 2 failed.",
    )  # fmt: skip
    assert svg.startswith("<svg") and 'role="img"' in svg
    assert "<title" in svg and "<desc" in svg and "72 succeeded, 2 failed." in svg
    assert svg.count('class="s-succeeded"') == 24 + 1  # the bars and the legend swatch
    assert svg.count('class="s-failed"') == 1 + 1  # a bar of zero is not drawn
    assert ">00:00<" in svg and ">UTC<" in svg  # the time axis
    assert ">5<" in svg  # the value axis ends at a round number over 3 + 2
    assert "style=" not in svg


def test_a_line_breaks_where_a_bin_has_no_value():
    values = [0.5, 0.25, None, None, 1.0] + [None] * 19
    svg = charts.line_chart(
        "Failure rate", HOURS, timedelta(hours=1), [charts.Stack("failed", "s-failed", values)],
        "summary", lambda v: f"{v:.0%}", top=1.0,
    )  # fmt: skip
    assert svg.count("<circle") == 3
    assert svg.count("<polyline") == 1  # the lone last value is a dot, not a line
    assert ">100%<" in svg


def test_text_from_the_database_is_escaped():
    end = START + timedelta(hours=1)
    span = charts.Span(START, end, "s-failed", '"><img src=x>', "/x/?a=1&b=2")
    lane = charts.Lane('<script>alert("x")</script>', [span], "/jobs/1/")
    svg = charts.time_lanes("Runs & fires", [lane], START, START + timedelta(hours=24), "<b>")
    assert "<script>" not in svg and "<img" not in svg and "<b>" not in svg
    assert "&lt;script&gt;" in svg and "Runs &amp; fires" in svg
    assert 'href="/x/?a=1&amp;b=2"' in svg
