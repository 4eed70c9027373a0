"""The report's plots a person can read: labels of close points apart, titles naming model, hardware and dataset."""

from __future__ import annotations

import itertools
from pathlib import Path


def test_close_points_get_labels_that_do_not_overlap():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from llmopt.reports.plots import _place_labels

    # The blot of the tiny demo: sdpa-b8, vllm and compile-b8 within 2% of each other on both axes.
    points = [("sdpa-b8", 1.00, 0.2400), ("vllm", 1.02, 0.2410), ("compile-b8", 1.01, 0.2405), ("default-b8", 0.99, 0.2395)]
    fig, ax = plt.subplots(figsize=(7, 5))
    ax.scatter([x for _, x, _ in points], [y for _, _, y in points])
    ax.set_xscale("log")
    texts = _place_labels(ax, points)
    fig.canvas.draw()
    boxes = [t.get_window_extent(fig.canvas.get_renderer()) for t in texts]
    plt.close(fig)
    assert len(boxes) == len(points)
    for a, b in itertools.combinations(boxes, 2):
        assert not a.overlaps(b), (a, b)


def test_plot_title_names_model_hardware_and_dataset():
    from llmopt.reports.contents import plot_title
    from llmopt.reports.rows import Row, Source

    source = Source(Path("results/cpu-demo"))
    summary = {"model": "smollm2-135m", "device": "AMD EPYC (2 cores)", "dataset": "sample"}
    rows = [
        Row("default-b1", "default", 1, summary, Path("x"), source),
        Row("lead", "lead", 1, {**summary, "model": "none"}, Path("y"), source),
    ]
    title = plot_title(rows, [source])
    assert "smollm2-135m" in title and "AMD EPYC (2 cores)" in title and "sample" in title and "none" not in title
