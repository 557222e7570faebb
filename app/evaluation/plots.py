"""PNG plots of an evaluation: precision-recall, scores over the confidence cut, confusions.

Everything is read from a :class:`~app.detector.matches.MatchTable`, as the slider is, and
drawn with matplotlib's object-oriented API on the Agg canvas. Never pyplot: it keeps a
global registry of open figures and a "current" figure and axes, none of it thread safe,
and the API server renders plots in worker threads. A figure made here belongs to its
caller alone and is garbage collected like any other object; nothing global is touched.

Label names are user text: they are drawn as written, never parsed as mathtext (a name
such as ``"$5 note and $10 note"`` would otherwise be typeset, or fail to draw).
"""

from __future__ import annotations

import io

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.text import Text

from app.detector import matches
from app.detector.matches import MatchTable

DPI = 100
CURVE_SIZE = (6.4, 4.8)  # inches; 640 x 480 pixels at DPI
MAX_CONFUSION_SIZE = 14.0  # inches a side, however many labels
# Past this many rows a cell is a few pixels wide and thousands of texts take seconds to
# lay out; the colours still tell the story.
MAX_ANNOTATED_ROWS = 30
BACKGROUND = "background"
LIMITS = (0.0, 1.02)  # a curve along 1.0 stays visible above the axes' edge


def png(figure: Figure) -> bytes:
    """The figure as PNG bytes at :data:`DPI`, so its size in pixels is its size in inches
    times 100."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def precision_recall_figure(table: MatchTable, *, iou: float) -> Figure:
    """Precision against recall per label, one line per label with ground truth."""
    threshold = _iou_used(iou)
    figure, axes = _new_figure(CURVE_SIZE)
    colours = _colours(table.num_labels)
    drawn = 0
    any_detection = False
    for label, name in enumerate(_names(table)):
        line = matches.curve(table, iou=iou, label=label)
        if line.num_truths == 0:
            continue  # recall is undefined without ground truth
        best = matches.best_f1(line)
        summary = f"max F1 {best.f1:.2f}" if best else "no detections"
        any_detection |= best is not None
        # Start at recall 0 with the first cut's precision; "steps-pre" then holds each
        # precision over the recall it took to reach it, as average precision reads it.
        recall, precision = line.recall, line.precision
        if len(recall):
            recall = np.concatenate(([0.0], recall))
            precision = np.concatenate((precision[:1], precision))
        axes.plot(
            recall,
            precision,
            drawstyle="steps-pre",
            color=colours[label],
            label=f"{name} ({summary})",
        )
        drawn += 1
    axes.set_xlim(*LIMITS)
    axes.set_ylim(*LIMITS)
    axes.set_xlabel("Recall")
    axes.set_ylabel("Precision")
    axes.set_title(f"Precision\N{EN DASH}recall at IoU {threshold:.2f}")
    axes.grid(alpha=0.3)
    if not drawn:
        _note(axes, "no ground-truth boxes")
        return figure
    _legend(axes, columns=1 if drawn <= 8 else 2)
    if not any_detection:
        _note(axes, "no detections")
    return figure


def threshold_figure(table: MatchTable, *, iou: float, label: int | None = None) -> Figure:
    """Precision, recall and F1 against the confidence threshold, of one label or of all
    labels pooled (``label=None``), with the threshold of the highest F1 marked."""
    if label is not None and not 0 <= label < table.num_labels:
        raise ValueError(f"label {label} is not one of the table's {table.num_labels}")
    threshold = _iou_used(iou)
    name = "all labels" if label is None else _names(table)[label]
    line = matches.curve(table, iou=iou, label=label)
    figure, axes = _new_figure(CURVE_SIZE)
    # Cuts in ascending order, from 0 (everything kept: the lowest score's figures) to 1
    # (nothing kept above the highest score: the no-detection conventions of
    # matches.rates). A cut between two scores keeps what the higher score keeps, so with
    # "steps-pre" each value spans from the next lower score up to its own.
    cuts = np.concatenate(([0.0], line.thresholds[::-1], [1.0]))
    nothing_kept = matches.rates(np.zeros(1), np.zeros(1), np.full(1, float(line.num_truths)))
    for title, values, kept_none in zip(
        ("Precision", "Recall", "F1"),
        (line.precision, line.recall, line.f1),
        nothing_kept,
        strict=True,
    ):
        lowest = values[-1:] if len(values) else kept_none
        axes.plot(
            cuts,
            np.concatenate((lowest, values[::-1], kept_none)),
            drawstyle="steps-pre",
            label=title,
        )
    best = matches.best_f1(line)
    if best is not None:
        axes.axvline(best.confidence_threshold, color="0.35", linestyle="--", linewidth=1)
        axes.annotate(
            f"max F1 {best.f1:.2f} at {best.confidence_threshold:.2f}",
            xy=(best.confidence_threshold, 1.0),
            xytext=(4, -4),
            textcoords="offset points",
            va="top",
            fontsize="small",
            color="0.25",
        )
    axes.set_xlim(0.0, 1.0)
    axes.set_ylim(*LIMITS)
    axes.set_xlabel("Confidence threshold")
    axes.set_ylabel("Score")
    _plain(axes.set_title(f"{name}: precision, recall and F1 at IoU {threshold:.2f}"))
    axes.grid(alpha=0.3)
    _legend(axes, columns=3)
    if not len(line.thresholds):
        _note(axes, "no detections")
    return figure


def confusion_figure(
    table: MatchTable, *, confidence: float, iou: float, normalize: bool = True
) -> Figure:
    """True against predicted label at one (confidence, IoU) point, with "background" for
    false alarms (its row) and missed boxes (its column); ``normalize`` shades each row by
    its share of the row (the true label's boxes; the false alarms in the background row),
    and every cell shows its count (up to :data:`MAX_ANNOTATED_ROWS` rows)."""
    point = matches.outcome(table, confidence=confidence, iou=iou)
    matrix = matches.confusion_matrix(table, point)
    totals = matrix.sum(axis=1, keepdims=True)
    shares = np.divide(
        matrix, totals, out=np.zeros(matrix.shape, dtype=np.float64), where=totals > 0
    )
    rows = len(matrix)
    side = min(MAX_CONFUSION_SIZE, max(CURVE_SIZE[1], 2.0 + 0.55 * rows))
    figure, axes = _new_figure((min(MAX_CONFUSION_SIZE, side + 1.4), side))
    shading = shares if normalize else matrix
    darkest = 1.0 if normalize else float(max(1, matrix.max()))
    image = axes.imshow(shading, cmap="Blues", vmin=0.0, vmax=darkest, interpolation="nearest")
    colorbar = figure.colorbar(image, ax=axes, fraction=0.05, pad=0.03)
    colorbar.set_label("Share of the row" if normalize else "Boxes")
    names = [*_names(table), BACKGROUND]
    positions = np.arange(rows)
    axes.set_xticks(positions, labels=names, rotation=45, ha="right", rotation_mode="anchor")
    axes.set_yticks(positions, labels=names)
    for tick in (*axes.get_xticklabels(), *axes.get_yticklabels()):
        _plain(tick)
    axes.set_xlabel("Predicted")
    axes.set_ylabel("True")
    axes.set_title(
        f"Confusion matrix at confidence {point.confidence:.2f}, IoU {point.iou_threshold:.2f}"
    )
    if not matrix.any():
        _note(axes, "no detections or ground-truth boxes", boxed=True)
    elif rows <= MAX_ANNOTATED_ROWS:
        _annotate_cells(axes, matrix, shares if normalize else None, shading / darkest)
    return figure


# -- drawing helpers ---------------------------------------------------------------------


def _new_figure(size: tuple[float, float]) -> tuple[Figure, Axes]:
    # Constrained layout keeps rotated tick labels and the colorbar inside the canvas
    # without bbox_inches="tight", which would change the PNG's size in pixels.
    figure = Figure(figsize=size, dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure, figure.add_subplot()


def _iou_used(iou: float) -> float:
    """The stored IoU threshold a plot at ``iou`` is drawn for (the title names it)."""
    return float(matches.IOU_THRESHOLDS[matches.iou_index(iou)])


def _names(table: MatchTable) -> list[str]:
    return [str(name) for name in table.labels]


def _colours(count: int) -> list[tuple[float, float, float, float]]:
    palette = colormaps["tab10" if count <= 10 else "tab20"]
    return [palette(i % palette.N) for i in range(count)]


def _plain(text: Text) -> Text:
    text.set_parse_math(False)
    return text


def _legend(axes: Axes, *, columns: int) -> None:
    legend = axes.legend(loc="lower left", fontsize="small", ncols=columns, framealpha=0.9)
    for text in legend.get_texts():
        _plain(text)


def _note(axes: Axes, message: str, *, boxed: bool = False) -> None:
    """A message in the middle of empty axes, so an empty plot is not taken for a bug."""
    axes.text(
        0.5,
        0.5,
        message,
        transform=axes.transAxes,
        ha="center",
        va="center",
        color="0.4",
        bbox={"facecolor": "white", "edgecolor": "0.7"} if boxed else None,
    )


def _annotate_cells(
    axes: Axes, matrix: np.ndarray, shares: np.ndarray | None, shade: np.ndarray
) -> None:
    """Each cell's count, and its row share when ``shares`` is given and the count is not
    0; ``shade`` is the cell's colour on the scale 0 to 1."""
    rows = len(matrix)
    size = "medium" if rows <= 6 else "small" if rows <= 12 else "x-small"
    for (row, column), count in np.ndenumerate(matrix):
        if count == 0:
            # Most cells are empty: kept quiet, the few that matter stand out.
            text, colour = "0", "0.6"
        else:
            text = str(count) if shares is None else f"{count}\n{shares[row, column]:.0%}"
            # Black text is unreadable on the dark end of "Blues".
            colour = "white" if shade[row, column] > 0.55 else "black"
        axes.text(column, row, text, ha="center", va="center", fontsize=size, color=colour)
