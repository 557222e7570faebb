"""The evaluation's plots show the slider's figures and render to real PNG images."""

from __future__ import annotations

import io
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure
from PIL import Image

from app.detector import matches
from app.evaluation import plots
from tests.detector.test_metrics import dets, random_case, truth

# A plot that warns (an empty legend, a division by zero, a layout that gave up) is a defect.
pytestmark = pytest.mark.filterwarnings("error")

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CAT, DOG, BIRD = 0, 1, 2
NAMES = ["cat", "dog", "bird"]


def small_table() -> matches.MatchTable:
    """Image a: a cat found (0.9), a dog box called cat (0.8, a confusion), a cat box
    missed, and a dog where there is nothing (0.7, a false alarm). Image b: a dog found
    (0.6) and a bird where there is nothing (0.3). bird has no ground truth."""
    cat_found, dog_confused = [0, 0, 100, 100], [200, 200, 300, 300]
    cat_missed = [400, 400, 500, 500]
    nothing = [600, 600, 700, 700]
    image_a = (
        truth([cat_found, dog_confused, cat_missed], [CAT, DOG, CAT]),
        dets([cat_found, dog_confused, nothing], [0.9, 0.8, 0.7], [CAT, CAT, DOG]),
    )
    dog_found = [0, 0, 50, 50]
    image_b = (
        truth([dog_found], [DOG]),
        dets([dog_found, nothing], [0.6, 0.3], [DOG, BIRD]),
    )
    return matches.build(
        [image_a[0], image_b[0]],
        [image_a[1], image_b[1]],
        label_names=NAMES,
        image_ids=["a", "b"],
        image_sizes=[(1000, 1000)] * 2,
    )


def random_table(seed: int) -> matches.MatchTable:
    truths, detections, num_labels = random_case(seed)
    return matches.build(
        truths,
        detections,
        label_names=[f"label{k}" for k in range(num_labels)],
        image_ids=[f"image{i}" for i in range(len(truths))],
        image_sizes=[(1000, 1000)] * len(truths),
    )


def empty_table(names: list[str], truths: list[list[int]] | None = None) -> matches.MatchTable:
    boxes = [[10 * i, 10 * i, 10 * i + 5, 10 * i + 5] for i in range(len(truths or []))]
    return matches.build(
        [truth(boxes, truths or [])],
        [dets([], [], [])],
        label_names=names,
        image_ids=["a"],
        image_sizes=[(100, 100)],
    )


def legend_texts(figure: Figure) -> list[str]:
    legend = figure.axes[0].get_legend()
    return [] if legend is None else [text.get_text() for text in legend.get_texts()]


def notes(figure: Figure) -> list[str]:
    axes = figure.axes[0]
    return [text.get_text() for text in axes.texts if text.get_transform() == axes.transAxes]


def cell_texts(figure: Figure) -> dict[tuple[int, int], str]:
    """The text on each cell of the confusion matrix, by (row, column)."""
    axes = figure.axes[0]
    texts = [text for text in axes.texts if text.get_transform() == axes.transData]
    return {
        (round(text.get_position()[1]), round(text.get_position()[0])): text.get_text()
        for text in texts
    }


def pixels(data: bytes) -> Image.Image:
    assert data.startswith(PNG_SIGNATURE)
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG"
    return image.convert("RGB")


def colours_in(image: Image.Image) -> set[tuple[int, int, int]]:
    return {colour for _, colour in image.getcolors(maxcolors=image.width * image.height)}


# -- precision-recall ------------------------------------------------------------------


def test_precision_recall_has_one_line_per_label_with_ground_truth() -> None:
    figure = plots.precision_recall_figure(small_table(), iou=0.5)
    axes = figure.axes[0]
    assert (axes.get_xlabel(), axes.get_ylabel()) == ("Recall", "Precision")
    assert "IoU 0.50" in axes.get_title()
    # cat: 0.9 found, 0.8 a confusion, of 2 boxes; dog: 0.7 a false alarm, 0.6 found, of 2.
    # bird has detections but no ground truth, so no recall and no line.
    assert legend_texts(figure) == ["cat (max F1 0.67)", "dog (max F1 0.50)"]
    cat, dog = axes.lines
    assert list(cat.get_xdata()) == pytest.approx([0.0, 0.5, 0.5])
    assert list(cat.get_ydata()) == pytest.approx([1.0, 1.0, 0.5])
    assert list(dog.get_xdata()) == pytest.approx([0.0, 0.0, 0.5])
    assert list(dog.get_ydata()) == pytest.approx([0.0, 0.0, 0.5])
    assert axes.get_xlim()[1] >= 1.0 and axes.get_ylim()[1] >= 1.0


@pytest.mark.parametrize(("iou", "used"), [(0.52, "0.50"), (0.53, "0.55"), (0.99, "0.99")])
def test_titles_name_the_stored_iou_threshold_used(iou: float, used: str) -> None:
    table = small_table()
    for figure in (
        plots.precision_recall_figure(table, iou=iou),
        plots.threshold_figure(table, iou=iou),
        plots.confusion_figure(table, confidence=0.5, iou=iou),
    ):
        assert f"IoU {used}" in figure.axes[0].get_title()


@pytest.mark.parametrize("seed", [3, 14, 21])
def test_precision_recall_of_random_data_draws_every_label_with_truths(seed: int) -> None:
    table = random_table(seed)
    figure = plots.precision_recall_figure(table, iou=0.5)
    with_truths = [str(table.labels[k]) for k in np.unique(table.truth_label)]
    assert [text.split(" (")[0] for text in legend_texts(figure)] == with_truths
    image = pixels(plots.png(figure))
    present = colours_in(image)
    for line in figure.axes[0].lines:
        rgb = tuple(round(255 * c) for c in to_rgb(line.get_color()))
        assert rgb in present, line.get_label()


# -- over the confidence threshold -----------------------------------------------------


def test_threshold_figure_of_all_labels_marks_the_best_f1() -> None:
    figure = plots.threshold_figure(small_table(), iou=0.5)
    axes = figure.axes[0]
    assert (axes.get_xlabel(), axes.get_ylabel()) == ("Confidence threshold", "Score")
    assert axes.get_xlim() == (0.0, 1.0)
    assert "all labels" in axes.get_title() and "IoU 0.50" in axes.get_title()
    assert legend_texts(figure) == ["Precision", "Recall", "F1"]
    # Pooled, 4 boxes: F1 0.40 at 0.9, 0.33 at 0.8, 0.29 at 0.7, 0.50 at 0.6, 0.44 at 0.3.
    dashed = [line for line in axes.lines if line.get_linestyle() == "--"]
    assert len(dashed) == 1
    assert list(dashed[0].get_xdata()) == pytest.approx([0.6, 0.6])


def test_threshold_figure_of_one_label_names_it() -> None:
    table = small_table()
    figure = plots.threshold_figure(table, iou=0.5, label=DOG)
    assert figure.axes[0].get_title().startswith("dog:")
    assert legend_texts(figure) == ["Precision", "Recall", "F1"]
    # bird has no ground truth: no best F1 to mark.
    bird = plots.threshold_figure(table, iou=0.5, label=BIRD)
    assert not [line for line in bird.axes[0].lines if line.get_linestyle() == "--"]
    with pytest.raises(ValueError, match="label 3"):
        plots.threshold_figure(table, iou=0.5, label=3)


def step_value(x: np.ndarray, y: np.ndarray, at: float) -> float:
    """What a "steps-pre" line shows at ``at``: the value whose step ends at or after it."""
    return float(y[np.searchsorted(x, at, side="left")])


@pytest.mark.parametrize("seed", [3, 4, 11, 14, 21, 40])
def test_threshold_lines_show_the_slider_figures_at_every_cut(seed: int) -> None:
    table = random_table(seed)
    for label in [None, *range(table.num_labels)]:
        figure = plots.threshold_figure(table, iou=0.75, label=label)
        lines = {line.get_label(): line for line in figure.axes[0].lines}
        assert {lines[name].get_drawstyle() for name in ("Precision", "Recall", "F1")} == {
            "steps-pre"
        }
        for cut in [*np.linspace(0.0, 1.0, 41), *table.det_score[:5]]:
            got = matches.counts(table, matches.outcome(table, confidence=cut, iou=0.75))
            picked = slice(None) if label is None else slice(label, label + 1)
            expected = matches.rates(
                got.tp[picked].sum(), got.fp[picked].sum(), got.fn[picked].sum()
            )
            for name, value in zip(("Precision", "Recall", "F1"), expected, strict=True):
                x, y = (np.asarray(a) for a in lines[name].get_data())
                assert step_value(x, y, cut) == pytest.approx(float(value)), (label, cut)


# -- confusion matrix ------------------------------------------------------------------


def test_confusion_figure_counts_and_shares_each_cell() -> None:
    figure = plots.confusion_figure(small_table(), confidence=0.5, iou=0.5)
    axes = figure.axes[0]
    assert len(figure.axes) == 2  # the matrix and its colorbar
    assert (axes.get_xlabel(), axes.get_ylabel()) == ("Predicted", "True")
    assert "confidence 0.50" in axes.get_title() and "IoU 0.50" in axes.get_title()
    names = [*NAMES, "background"]
    assert [text.get_text() for text in axes.get_xticklabels()] == names
    assert [text.get_text() for text in axes.get_yticklabels()] == names
    # Rows true, columns predicted. cat: 1 found, 1 missed; dog: 1 called cat, 1 found;
    # bird: nothing; background: the dog false alarm (the bird one is below 0.5).
    expected = {(row, column): "0" for row in range(4) for column in range(4)}
    expected[CAT, CAT] = expected[CAT, 3] = "1\n50%"
    expected[DOG, CAT] = expected[DOG, DOG] = "1\n50%"
    expected[3, DOG] = "1\n100%"
    assert cell_texts(figure) == expected
    shares = np.asarray(axes.images[0].get_array())
    assert shares.sum(axis=1) == pytest.approx([1.0, 1.0, 0.0, 1.0])


def test_confusion_figure_unnormalized_shows_counts_only() -> None:
    figure = plots.confusion_figure(small_table(), confidence=0.75, iou=0.5, normalize=False)
    # At 0.75 the dog false alarm (0.7) and the found dog (0.6) are cut: that dog is missed.
    expected = {(row, column): "0" for row in range(4) for column in range(4)}
    expected[CAT, CAT] = expected[CAT, 3] = expected[DOG, CAT] = expected[DOG, 3] = "1"
    assert cell_texts(figure) == expected
    assert "confidence 0.75" in figure.axes[0].get_title()


def test_confusion_figure_grows_with_the_labels_up_to_a_cap() -> None:
    few = plots.confusion_figure(small_table(), confidence=0.5, iou=0.5)
    some = plots.confusion_figure(random_table(21), confidence=0.5, iou=0.5)  # 10 labels
    many = plots.confusion_figure(
        empty_table([f"label{k}" for k in range(80)]), confidence=0.5, iou=0.5
    )
    assert few.get_size_inches()[1] < some.get_size_inches()[1]
    assert some.get_size_inches()[1] < many.get_size_inches()[1]
    assert max(many.get_size_inches()) <= plots.MAX_CONFUSION_SIZE
    width, height = many.get_size_inches() * plots.DPI
    assert pixels(plots.png(many)).size == (round(width), round(height))


# -- PNG -------------------------------------------------------------------------------

FIGURES: dict[str, Callable[[matches.MatchTable], Figure]] = {
    "precision_recall": lambda table: plots.precision_recall_figure(table, iou=0.5),
    "threshold": lambda table: plots.threshold_figure(table, iou=0.5),
    "confusion": lambda table: plots.confusion_figure(table, confidence=0.5, iou=0.5),
}


@pytest.mark.parametrize("kind", FIGURES)
def test_png_is_a_drawn_image_of_the_figure_size(kind: str) -> None:
    figure = FIGURES[kind](random_table(14))
    image = pixels(plots.png(figure))
    width, height = figure.get_size_inches() * plots.DPI
    assert image.size == (round(width), round(height))
    if kind != "confusion":
        assert image.size == (640, 480)
    assert len(colours_in(image)) > 2


@pytest.mark.parametrize(
    "table",
    [
        empty_table(["cat", "dog"]),
        empty_table([]),
        empty_table(["cat", "dog"], truths=[CAT, DOG, DOG]),  # boxes, but no detections
    ],
    ids=["nothing", "no labels", "no detections"],
)
def test_an_empty_evaluation_still_renders_every_plot(table: matches.MatchTable) -> None:
    for kind, draw in FIGURES.items():
        figure = draw(table)
        image = pixels(plots.png(figure))
        assert len(colours_in(image)) > 2, kind
    precision_recall = FIGURES["precision_recall"](table)
    threshold = FIGURES["threshold"](table)
    confusion = FIGURES["confusion"](table)
    names = [str(name) for name in table.labels]
    if table.num_truths:
        assert legend_texts(precision_recall) == ["cat (no detections)", "dog (no detections)"]
        assert notes(precision_recall) == ["no detections"]
        assert cell_texts(confusion)[DOG, 2] == "2\n100%"  # both dogs missed
    else:
        assert legend_texts(precision_recall) == []
        assert notes(precision_recall) == ["no ground-truth boxes"]
        assert notes(confusion) == ["no detections or ground-truth boxes"]
    assert legend_texts(threshold) == ["Precision", "Recall", "F1"]
    assert notes(threshold) == ["no detections"]
    ticks = [text.get_text() for text in confusion.axes[0].get_xticklabels()]
    assert ticks == [*names, "background"]


def test_label_names_are_drawn_as_written_not_as_mathtext() -> None:
    # Unescaped, "$\notacommand$" fails to draw: mathtext knows no such symbol.
    names = [r"$\notacommand$ sign", "50$ and 20$ notes"]
    table = matches.build(
        [truth([[0, 0, 10, 10], [20, 20, 30, 30]], [0, 1])],
        [dets([[0, 0, 10, 10], [50, 50, 60, 60]], [0.9, 0.8], [0, 1])],
        label_names=names,
        image_ids=["a"],
        image_sizes=[(100, 100)],
    )
    for figure in (
        plots.precision_recall_figure(table, iou=0.5),
        plots.threshold_figure(table, iou=0.5, label=0),
        plots.confusion_figure(table, confidence=0.5, iou=0.5),
    ):
        assert plots.png(figure).startswith(PNG_SIGNATURE)
    assert legend_texts(plots.precision_recall_figure(table, iou=0.5))[0].startswith(names[0])


def test_plots_render_the_same_from_many_threads_at_once() -> None:
    table = random_table(14)
    kinds = list(FIGURES)
    alone = {kind: plots.png(FIGURES[kind](table)) for kind in kinds}
    with ThreadPoolExecutor(max_workers=4) as pool:
        together = list(pool.map(lambda i: plots.png(FIGURES[kinds[i % 3]](table)), range(9)))
    assert together == [alone[kinds[i % 3]] for i in range(9)]
