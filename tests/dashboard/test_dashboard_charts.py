"""Server-side SVG charts: well-formed, accessible, one mark per value, labels escaped."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest
from markupsafe import Markup

from dashboard import charts

SVG = "{http://www.w3.org/2000/svg}"


def parse(svg: Markup) -> ET.Element:
    assert isinstance(svg, Markup)
    root = ET.fromstring(str(svg))
    assert root.tag == f"{SVG}svg"
    return root


def marks(root: ET.Element, tag: str, cls: str) -> list[ET.Element]:
    return [e for e in root.iter(f"{SVG}{tag}") if e.get("class") == cls]


def test_a_bar_chart_has_a_bar_per_item_and_is_accessible() -> None:
    root = parse(charts.bar_chart([("real", 7), ("fake", 3)], title="Final labels"))
    bars = marks(root, "rect", "bar")
    assert len(bars) == 2
    assert float(bars[0].get("width", 0)) > float(bars[1].get("width", 0)) > 0
    assert root.get("role") == "img" and root.get("aria-label") == "Final labels"
    assert root.find(f"{SVG}title") is not None
    assert [e.findtext(f"{SVG}title") for e in bars] == ["real: 7", "fake: 3"]


def test_a_line_chart_has_a_point_per_value() -> None:
    points = [(f"h{i}", float(i % 3)) for i in range(48)]
    root = parse(charts.line_chart(points, title="Done per hour"))
    assert len(marks(root, "circle", "point")) == 48
    assert len(marks(root, "polyline", "line")) == 1
    assert len(marks(root, "polygon", "area")) == 1


def test_a_histogram_has_a_column_per_bin_and_checks_its_edges() -> None:
    counts = [i for i in range(20)]
    edges = [i / 20 for i in range(21)]
    root = parse(charts.histogram(counts, edges=edges, title="Scores"))
    bars = marks(root, "rect", "bar")
    assert len(bars) == 20
    assert float(bars[0].get("height", -1)) == 0.0
    with pytest.raises(ValueError):
        charts.histogram(counts, edges=edges[:-1], title="Scores")


@pytest.mark.parametrize("empty", [[], [("a", 0.0)]])
def test_empty_or_zero_data_still_renders(empty: list[tuple[str, float]]) -> None:
    parse(charts.bar_chart(empty, title="Nothing"))
    parse(charts.line_chart(empty, title="Nothing"))


def test_labels_and_titles_are_escaped() -> None:
    evil = '<script>alert("x")</script>'
    for svg in (
        charts.bar_chart([(evil, 1)], title=evil),
        charts.line_chart([(evil, 1), ("b", 2)], title=evil),
        charts.histogram([1], edges=[0, 1], title=evil),
    ):
        assert "<script" not in str(svg)
        root = parse(svg)
        # The text survives, as text: a screen reader reads it, a browser does not run it.
        assert root.get("aria-label") == evil
        assert root.findtext(f"{SVG}title") == evil
        assert not list(root.iter(f"{SVG}script")) and not list(root.iter("script"))


def test_charts_need_nothing_from_outside() -> None:
    svg = str(charts.line_chart([("a", 1), ("b", 2)], title="t"))
    for outside in ("http://", "https://", "<script", "style=", "@import", "href"):
        assert outside not in svg.replace("http://www.w3.org/2000/svg", "")


def test_a_grouped_bar_chart_has_one_bar_per_label_and_series_on_one_scale() -> None:
    root = parse(
        charts.grouped_bar_chart(
            ["fake", "real"], [("final", [3, 5]), ("model", [5, 3])], title="Labels"
        )
    )
    bars = [e for e in root.iter(f"{SVG}rect") if "bar" in (e.get("class") or "").split()]
    assert [e.findtext(f"{SVG}title") for e in bars] == [
        "fake, final: 3",
        "fake, model: 5",
        "real, final: 5",
        "real, model: 3",
    ]
    widths = [float(e.get("width", 0)) for e in bars]
    assert widths[1] == widths[2] > widths[0] == widths[3] > 0
    assert len([e for e in root.iter(f"{SVG}rect") if "legend" in (e.get("class") or "")]) == 2
    with pytest.raises(ValueError):
        charts.grouped_bar_chart(["a"], [("x", [1, 2])], title="mismatch")


def test_charts_are_wide_enough_to_fill_a_card_with_readable_text() -> None:
    # The stylesheet stretches a chart to its card; the viewBox is about a card's width,
    # so its text stays near FONT_SIZE pixels on a desktop screen.
    for svg in (
        charts.bar_chart([("a", 1)], title="t"),
        charts.line_chart([("a", 1), ("b", 2)], title="t"),
        charts.histogram([1], edges=[0, 1], title="t"),
        charts.grouped_bar_chart(["a"], [("x", [1])], title="t"),
    ):
        root = parse(svg)
        assert float(root.get("viewBox", "0 0 0 0").split()[2]) >= 1000
        assert int(root.get("font-size", 0)) >= 13
