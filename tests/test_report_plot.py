"""The eval report's plot: methods sharing a point are told apart (side by side, labelled),
and an unknown cost reads "unknown" as in every other report."""

from __future__ import annotations

from pathlib import Path

import pytest

from evals.report import dollars_per_task, overlapping_points, plot_scores
from evals.results import ResultRow


def _rows() -> list[ResultRow]:
    scores = {"direct": (1.0, 0.0), "rlm": (1.0, 0.5), "hybrid": (1.0, 0.5)}
    return [ResultRow(bench="oolong", task_id=str(i), method=m, model="local", status="answered", score=s, context_len=n)
            for m, pair in scores.items() for i, (n, s) in enumerate(zip((8192, 32768), pair))]


def test_shared_points_are_found_and_drawn_apart(tmp_path: Path) -> None:
    from evals import report

    series = report.score_series("oolong", _rows(), ["direct", "rlm", "hybrid"])
    shared = sorted((x, y, names) for x, y, names in overlapping_points(series))
    assert shared == [(8192, 100.0, ["direct", "rlm", "hybrid"]), (32768, 50.0, ["rlm", "hybrid"])]
    pytest.importorskip("matplotlib", reason="the report extra is not installed")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    drawn: list[object] = []
    original = plt.subplots

    def keep(*args: object, **kwargs: object):  # type: ignore[no-untyped-def]
        fig, axes = original(*args, **kwargs)
        drawn.append(axes[0][0])
        return fig, axes

    monkey = pytest.MonkeyPatch()
    monkey.setattr(plt, "subplots", keep)
    try:
        out = plot_scores(_rows(), tmp_path / "plot.png")
    finally:
        monkey.undo()
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ax = drawn[0]
    xs = {line.get_label(): list(line.get_xdata()) for line in ax.get_lines()}  # type: ignore[attr-defined]
    assert len({xs[m][0] for m in ("direct", "rlm", "hybrid")}) == 3  # the shared 8K point, side by side
    assert xs["direct"][1] == 32768 and xs["rlm"][1] != xs["hybrid"][1]
    markers = {line.get_marker() for line in ax.get_lines()}  # type: ignore[attr-defined]
    assert len(markers) == 3
    labels = {t.get_text() for t in ax.texts}  # type: ignore[attr-defined]
    assert labels == {"direct=rlm=hybrid", "rlm=hybrid"}


def test_an_unknown_cost_is_unknown() -> None:
    row = ResultRow(bench="oolong", task_id="t", method="rlm", model="x", status="answered", dollars=None)
    assert dollars_per_task([row]) == "unknown"
