"""Writing results: ``metrics.json`` and a self-contained HTML report with plots.

Plots are drawn with matplotlib's Agg backend through :class:`matplotlib.figure.Figure` objects (no
pyplot global state, so this is safe in threads and headless machines), embedded in the HTML as
base64 PNG images and also saved beside it as ``curves.png``, ``accuracy.png`` and
``confusion.png``.
"""

from __future__ import annotations

import base64
import html
import io
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from transferkit.errors import ConfigError
from transferkit.evaluation.compare import RunResult, fit_warnings, format_gain, summarize
from transferkit.io import atomic_write_bytes, atomic_write_json, atomic_write_text

logger = logging.getLogger(__name__)

_JSON_KEYS = ("runs", "baseline", "summary")


def write_metrics_json(
    path: str | os.PathLike,
    runs: Sequence[RunResult],
    baseline: str | None,
    extra: dict[str, Any] | None = None,
    metric: str = "accuracy",
) -> Path:
    """Write ``{"runs": [...], "baseline": ..., "summary": [...], **extra}`` atomically.

    Args:
        path: Target file (its folder is created).
        runs: The runs; each is stored as :meth:`RunResult.to_dict`.
        baseline: Name of the baseline configuration (see :func:`summarize`).
        extra: More top-level JSON-serialisable keys (e.g. the config); must not reuse
            ``runs``/``baseline``/``summary``.
        metric: The metric gains are measured in (see :func:`summarize`).

    Returns:
        The path written.

    Raises:
        ConfigError: Unknown baseline, no runs, or ``extra`` reuses a reserved key.
    """
    extra = dict(extra or {})
    clash = sorted(set(extra) & set(_JSON_KEYS))
    if clash:
        raise ConfigError(
            f"extra reuses reserved key(s) {clash} of metrics.json; rename them "
            f"(reserved: {', '.join(_JSON_KEYS)})"
        )
    summary = summarize(runs, baseline, metric)
    obj = {"runs": [r.to_dict() for r in runs], "baseline": baseline, "summary": summary, **extra}
    out = atomic_write_json(path, obj)
    logger.info("wrote %s (%d runs)", out, len(runs))
    return out


# --------------------------------------------------------------------------- plots


def _new_figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _png_bytes(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    return buf.getvalue()


def _mean_history(group: list[RunResult], key: str) -> tuple[list[float], list[float]]:
    """Epochs and the mean of ``key`` over the seeds that recorded it at that epoch."""
    by_epoch: dict[float, list[float]] = {}
    for run in group:
        for i, rec in enumerate(run.history):
            value = rec.get(key)
            if value is None:
                continue
            epoch = rec.get("epoch", i + 1)
            by_epoch.setdefault(float(epoch), []).append(float(value))
    epochs = sorted(by_epoch)
    return epochs, [float(np.mean(by_epoch[e])) for e in epochs]


def _plot_curves(groups: dict[str, list[RunResult]]) -> bytes:
    from matplotlib.ticker import MaxNLocator

    fig = _new_figure(11, 4)
    ax_acc, ax_loss = fig.subplots(1, 2)
    drawn = False
    for name, group in groups.items():
        n = len(group)
        label = f"{group[0].method} ({name})" + ("" if n == 1 else f", mean of {n}")
        for ax, key in ((ax_acc, "val_accuracy"), (ax_loss, "train_loss")):
            epochs, values = _mean_history(group, key)
            if epochs:
                ax.plot(epochs, values, marker="o", markersize=3, label=label)
                drawn = True
    ax_acc.set(title="validation accuracy", xlabel="epoch", ylabel="accuracy")
    ax_loss.set(title="training loss", xlabel="epoch", ylabel="loss")
    for ax in (ax_acc, ax_loss):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if ax.get_lines():
            ax.legend(fontsize=8)
    if not drawn:
        for ax in (ax_acc, ax_loss):
            ax.text(
                0.5,
                0.5,
                "no per-epoch history recorded",
                ha="center",
                va="center",
                transform=ax.transAxes,
            )
    fig.tight_layout()
    return _png_bytes(fig)


def _plot_accuracy(summary: list[dict[str, Any]]) -> bytes:
    fig = _new_figure(max(5.0, 1.2 * len(summary) + 2), 4)
    ax = fig.subplots()
    x = np.arange(len(summary))
    means = [100 * r["accuracy_mean"] for r in summary]
    stds = [100 * r["accuracy_std"] for r in summary]
    colors = []
    for r in summary:
        if r["is_baseline"]:
            colors.append("#888888")
        elif r["negative_transfer"]:
            colors.append("#d62728")
        else:
            colors.append("#1f77b4")
    bars = ax.bar(x, means, yerr=stds, capsize=4, color=colors, edgecolor="black")
    for bar, r in zip(bars, summary, strict=True):
        if r["is_baseline"]:
            bar.set_hatch("//")
    base = next((r for r in summary if r["is_baseline"]), None)
    if base is not None:
        ax.axhline(
            100 * base["accuracy_mean"],
            color="#555555",
            linestyle="--",
            linewidth=1,
            label=f"baseline: {base['method']}",
        )
    ax.set_xticks(x)
    ax.set_xticklabels([f"{r['method']}\n{r['name']}" for r in summary], rotation=20, ha="right")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("accuracy per method (error bars: std over seeds)")
    low = min(m - s for m, s in zip(means, stds, strict=True))
    ax.set_ylim(max(0.0, low - 5), min(100.0, max(means) + max(stds) + 5) + 1)
    if base is not None:
        ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return _png_bytes(fig)


def _plot_confusion(run: RunResult) -> bytes:
    cm = np.asarray(run.metrics.confusion, dtype=np.int64)
    k = cm.shape[0] if cm.ndim == 2 else 0
    size = min(12.0, max(4.0, 0.6 * k + 2))
    fig = _new_figure(size, size)
    ax = fig.subplots()
    if k == 0:
        ax.text(0.5, 0.5, "no confusion matrix recorded", ha="center", va="center")
        ax.set_axis_off()
        return _png_bytes(fig)
    names = list(run.metrics.class_names) or [str(i) for i in range(k)]
    im = ax.imshow(cm, cmap="Blues")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(np.arange(k))
    ax.set_yticks(np.arange(k))
    ax.set_xticklabels(names, rotation=45, ha="right")
    ax.set_yticklabels(names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"confusion: {run.method} ({run.name}, seed {run.seed})")
    if k <= 20:
        thresh = cm.max() / 2 if cm.size else 0
        for i in range(k):
            for j in range(k):
                ax.text(
                    j,
                    i,
                    str(cm[i, j]),
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white" if cm[i, j] > thresh else "black",
                )
    fig.tight_layout()
    return _png_bytes(fig)


def plot_similarity(panels: Mapping[str, Mapping[str, Mapping[str, float]]]) -> bytes:
    """Heat maps, one per panel (``{panel title: {row: {layer: value}}}``, e.g. linear CKA to the source
    and relative weight change, rows = models, columns = backbone blocks input side first), each cell
    written out."""
    panels = {t: rows for t, rows in panels.items() if rows}
    layers = list(dict.fromkeys(b for rows in panels.values() for row in rows.values() for b in row))
    n_rows = max((len(rows) for rows in panels.values()), default=1)
    label = max((len(b.removeprefix("backbone.")) for b in layers), default=4)  # rotated tick labels
    width = max(5.0, 0.9 * len(layers) + 3) * max(1, len(panels))
    fig = _new_figure(width, 1.5 + 0.6 * n_rows + 0.07 * label)
    axes = fig.subplots(1, max(1, len(panels)), squeeze=False)[0]
    if not panels:
        axes[0].text(0.5, 0.5, "no similarity measured", ha="center", va="center")
        axes[0].set_axis_off()
        return _png_bytes(fig)
    for ax, (title, rows) in zip(axes, panels.items(), strict=True):
        names = list(rows)
        grid = np.array([[rows[r].get(b, np.nan) for b in layers] for r in names], dtype=float)
        finite = grid[np.isfinite(grid)]
        top = 1.0 if "cka" in title.lower() else max(float(finite.max()) if finite.size else 0.0, 1e-6)
        im = ax.imshow(grid, cmap="viridis", aspect="auto", vmin=0.0, vmax=top)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
        ax.set_xticks(np.arange(len(layers)))
        ax.set_xticklabels([b.removeprefix("backbone.") for b in layers], rotation=45, ha="right")
        ax.set_yticks(np.arange(len(names)))
        ax.set_yticklabels(names)
        ax.set_title(title)
        lo, hi = im.get_clim()
        for i in range(len(names)):
            for j in range(len(layers)):
                if np.isfinite(grid[i, j]):
                    dark = grid[i, j] < (lo + hi) / 2
                    ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center", fontsize=8,
                            color="white" if dark else "black")
    fig.tight_layout()
    return _png_bytes(fig)


def similarity_section(out: Path, panels: Mapping[str, Mapping[str, Mapping[str, float]]],
                       intro: str) -> list[str]:
    """Write ``similarity.png`` into ``out`` and return the report's HTML lines for it."""
    png = plot_similarity(panels)
    atomic_write_bytes(out / "similarity.png", png)
    return ["<h2>What transfer changed, layer by layer</h2>", f"<p>{html.escape(intro)}</p>",
            _img(png, "layer similarity heat map")]


# --------------------------------------------------------------------------- HTML

_CSS = """
body { font-family: sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 4px 10px; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
p.warning { color: #a00; font-weight: bold; }
tr.baseline { background: #f0f0f0; font-style: italic; }
tr.negative td { color: #c00000; }
tr.negative td.gain { font-weight: bold; }
img { max-width: 100%; display: block; margin: 1em 0; }
p.howto { color: #555; font-size: 0.9em; }
"""


def _plot_retention(summary: list[dict[str, Any]]) -> bytes:
    """Target accuracy against source-task accuracy after fine-tuning (the forgetting trade-off)."""
    fig = _new_figure(6.5, 4.5)
    ax = fig.subplots()
    rows = [r for r in summary if "source_after_mean" in r]
    for r in rows:
        ax.errorbar(100 * r["source_after_mean"], 100 * r["accuracy_mean"],
                    xerr=100 * r["source_after_std"], yerr=100 * r["accuracy_std"],
                    fmt="o", capsize=3)
        ax.annotate(str(r["name"]), (100 * r["source_after_mean"], 100 * r["accuracy_mean"]),
                    textcoords="offset points", xytext=(4, 4), fontsize=7)
    before = [r["source_before_mean"] for r in rows if np.isfinite(r["source_before_mean"])]
    if before:
        ax.axvline(100 * before[0], color="#555555", linestyle="--", linewidth=1,
                   label="source accuracy before fine-tuning")
        ax.legend(fontsize=8)
    ax.set_xlabel("source-task accuracy after fine-tuning (%)")
    ax.set_ylabel("target test accuracy (%)")
    ax.set_title("target accuracy vs source retention")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _png_bytes(fig)


def _summary_html(summary: list[dict[str, Any]]) -> str:
    retention = any("source_after_mean" in r for r in summary)
    head = ["method", "name", "seeds", "accuracy", "macro-F1", "seconds"]
    head += ["source accuracy before &rarr; after"] if retention else []
    head += ["gain vs baseline" + (" (macro-F1)" if summary and summary[0].get("gain_metric") == "macro_f1"
                                   else "")]
    lines = ['<table class="summary">', "<tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>"]
    for r in summary:
        cls = "baseline" if r["is_baseline"] else ("negative" if r["negative_transfer"] else "")
        cells = [
            f"<td>{html.escape(str(r['method']))}</td>",
            f"<td>{html.escape(str(r['name']))}</td>",
            f'<td class="num">{r["n_seeds"]}</td>',
            f'<td class="num">{100 * r["accuracy_mean"]:.1f} &plusmn; '
            f"{100 * r['accuracy_std']:.1f} %</td>",
            f'<td class="num">{100 * r["macro_f1_mean"]:.1f} &plusmn; '
            f"{100 * r['macro_f1_std']:.1f} %</td>",
            f'<td class="num">{r["seconds_mean"]:.1f}</td>',
        ]
        if retention:
            cells.append(
                f'<td class="num">{100 * r["source_before_mean"]:.1f} &rarr; '
                f'{100 * r["source_after_mean"]:.1f} &plusmn; {100 * r["source_after_std"]:.1f} %</td>'
                if "source_after_mean" in r else "<td>-</td>"
            )
        cells.append(f'<td class="num gain">{html.escape(format_gain(r))}</td>')
        attr = f' class="{cls}"' if cls else ""
        lines.append(f"<tr{attr}>" + "".join(cells) + "</tr>")
    lines.append("</table>")
    return "\n".join(lines)


def _img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def write_report(
    out_dir: str | os.PathLike,
    runs: Sequence[RunResult],
    baseline: str | None,
    *,
    title: str = "transferkit report",
    notes: Sequence[str] = (),
    tables: Sequence[tuple[str, str]] = (),
    metric: str = "accuracy",
    similarity: Mapping[str, Mapping[str, Mapping[str, float]]] | None = None,
    similarity_intro: str = "",
) -> Path:
    """Write a self-contained ``out_dir/report.html`` plus its plots as PNG files.

    The report holds: the summary table (gain over the baseline; negative transfer in red),
    learning curves (validation accuracy and training loss per epoch, mean over seeds), a bar chart
    of test accuracy per method with std error bars (baseline bar grey and hatched), the confusion
    matrix of the best configuration (highest mean accuracy; its first seed), the ``notes`` and a
    short guide to reading it. ``curves.png``, ``accuracy.png`` and ``confusion.png`` are written
    beside it.

    Args:
        out_dir: Folder to write into (created if needed).
        runs: The runs to report.
        baseline: Name of the baseline configuration.
        title: Page title.
        notes: Free-text notes shown as a list (escaped).
        tables: More ``(title, preformatted text)`` sections, shown after the summary.
        metric: The metric gains are measured in (see :func:`summarize`).
        similarity: Heat maps of what transfer changed (``{panel: {row: {layer: value}}}``, see
            :func:`plot_similarity`), written as ``similarity.png`` with ``similarity_intro`` above.

    Returns:
        Path of ``report.html``.

    Raises:
        ConfigError: No runs or unknown baseline.
    """
    out = Path(out_dir)
    summary = summarize(runs, baseline, metric)
    groups: dict[str, list[RunResult]] = {}
    for run in runs:
        groups.setdefault(run.name, []).append(run)
    best_row = max(summary, key=lambda r: r["accuracy_mean"])
    best_run = groups[best_row["name"]][0]

    pngs = {
        "curves.png": _plot_curves(groups),
        "accuracy.png": _plot_accuracy(summary),
        "confusion.png": _plot_confusion(best_run),
    }
    if any("source_after_mean" in r for r in summary):
        pngs["retention.png"] = _plot_retention(summary)
    for fname, data in pngs.items():
        atomic_write_bytes(out / fname, data)

    base_row = next((r for r in summary if r["is_baseline"]), None)
    esc = html.escape
    compared = (
        f"baseline: <b>{esc(str(base_row['method']))}</b> ({esc(str(baseline))}); "
        if base_row is not None
        else "<b>no baseline</b> (nothing trained from scratch: no gain is measured); "
    )
    notes_html = (
        "<ul>\n" + "\n".join(f"<li>{esc(str(n))}</li>" for n in notes) + "\n</ul>"
        if notes
        else "<p>(none)</p>"
    )
    n_negative = sum(1 for r in summary if r["negative_transfer"])
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{esc(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{esc(title)}</h1>",
        f"<p>{len(runs)} run(s) in {len(summary)} configuration(s); {compared}"
        f"{n_negative} configuration(s) with negative transfer.</p>",
        '<p class="howto">How to read this: accuracy and macro-F1 are on the test set, mean '
        f"&plusmn; std over seeds; <i>gain</i> is the difference in mean "
        f"{'macro-F1' if metric == 'macro_f1' else metric} from "
        "the baseline in percentage points (pp); a negative gain (red) means the transferred knowledge hurt "
        "(negative transfer); <i>(n.s.)</i> marks a gain within two standard errors of the "
        "difference, i.e. not clearly different from the baseline.</p>",
        "<h2>Summary</h2>",
        _summary_html(summary),
        *(f'<p class="warning">{esc(w)}</p>' for w in fit_warnings(summary)),
        *(f"<h2>{esc(t)}</h2>\n<pre>{esc(body)}</pre>" for t, body in tables),
        "<h2>Learning curves</h2>",
        _img(pngs["curves.png"], "learning curves"),
        "<h2>Accuracy per method</h2>",
        _img(pngs["accuracy.png"], "accuracy per method"),
        f"<h2>Confusion matrix of the best run: {esc(str(best_row['method']))} "
        f"({esc(best_run.name)}, seed {best_run.seed})</h2>",
        _img(pngs["confusion.png"], "confusion matrix"),
        *(
            ["<h2>Target accuracy vs source retention</h2>",
             "<p>Source-task accuracy of the fine-tuned backbone with the source head; the dashed "
             "line is the source model before fine-tuning. Up and right is better.</p>",
             _img(pngs["retention.png"], "target accuracy vs source retention")]
            if "retention.png" in pngs else []
        ),
        *(similarity_section(out, similarity, similarity_intro) if similarity else []),
        "<h2>Notes</h2>",
        notes_html,
        "</body></html>",
    ]
    path = atomic_write_text(out / "report.html", "\n".join(parts) + "\n")
    logger.info("wrote %s", path)
    return path


_MERGE_HOWTO = (
    "Test accuracy on each task. The merged rows show in brackets their difference in percentage points "
    "from the task's own model (the input named after the task; for models of one task, the best input); "
    "red: the merge lost accuracy on that task. -: a model without a head for that task.")
_MERGE_SIMILARITY = (
    "Rows: the inputs; columns: the backbone's blocks, input side first. Linear CKA of each input's "
    "representation with the merged model's on test inputs (1: the same up to rotation and scale), and the "
    "relative change of the block's weights from the input to the merged model.")


def write_task_report(
    out_dir: str | os.PathLike,
    accuracy: Mapping[str, Mapping[str, float | None]],
    similarity: Mapping[str, Mapping[str, Mapping[str, float]]],
    about: Mapping[str, Any],
    *,
    title: str = "transferkit merge report",
    howto: str | None = None,
) -> Path:
    """Write ``out_dir/report.html`` (and ``similarity.png`` when ``similarity`` is given) for models
    scored task by task (a merge; a multi-task run): the test accuracy of each row on every task, the
    other rows' change against each task's own model (a loss in red), the method (and alignment), the
    details and the layer-by-layer heat maps.

    Args:
        accuracy: ``{row: {task: accuracy or None}}`` (a merge's rows: inputs, then ``"merged"`` ...).
        similarity: Heat map panels (see :func:`plot_similarity`); empty: none.
        about: What was done (a merge's :meth:`~transferkit.transfer.merge.MergeResult.to_dict`):
            ``method``, ``options``, ``names`` (the rows that are inputs / own models), ``weights``,
            ``heads``, and optionally ``alignment`` and ``details``.
        howto: The paragraph saying how to read the table (default: a merge's).
    """
    out = Path(out_dir)
    esc = html.escape
    tasks = list(dict.fromkeys(t for row in accuracy.values() for t in row))
    inputs = [r for r in accuracy if r in (about.get("names") or [])]
    # each task's own model; for a task no input is named after (models of one task), the best input
    own = {t: accuracy[t][t] if t in accuracy else
           max((accuracy[r][t] for r in inputs if accuracy[r].get(t) is not None), default=None)
           for t in tasks}

    def cell(row: str, task: str) -> str:
        value = accuracy[row].get(task)
        if value is None:
            return '<td class="num">&ndash;</td>'
        text = f"{100 * value:.1f}%"
        negative = False
        if row not in inputs and own.get(task) is not None:
            diff = 100 * (value - own[task])
            text += f" ({diff:+.1f} pp)"
            negative = diff < 0
        style = ' style="color:#c00000"' if negative else ""
        return f'<td class="num"{style}>{text}</td>'

    header = "<tr><th></th>" + "".join(f"<th>{esc(t)}</th>" for t in tasks) + "</tr>"
    body = "\n".join("<tr><td>" + esc(row) + "</td>" + "".join(cell(row, t) for t in tasks) + "</tr>"
                     for row in accuracy)
    options = ", ".join(f"{k}={v}" for k, v in (about.get("options") or {}).items()) or "defaults"
    align = about.get("alignment")
    align_html = ("<p>No permutation alignment.</p>" if not align else
                  "<ul>" + "".join(f"<li>{esc(str(rec))}</li>" for rec in align) + "</ul>")
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{esc(title)}</title><style>{_CSS}</style></head><body>", f"<h1>{esc(title)}</h1>",
        f"<p>Method <b>{esc(str(about.get('method')))}</b> ({esc(options)}) over "
        f"{esc(', '.join(about.get('names') or []))}; weights {esc(str(about.get('weights')))}; heads "
        f"{esc(str(about.get('heads')))}.</p>",
        f'<p class="howto">{esc(howto or _MERGE_HOWTO)}</p>',
        f"<table>{header}\n{body}</table>",
        *(["<h2>Alignment</h2>", align_html] if "alignment" in about else []),
        *(["<h2>Details</h2>", f"<pre>{esc(_details(about.get('details')))}</pre>"]
          if about.get("details") else []),
        *(similarity_section(out, similarity, _MERGE_SIMILARITY) if similarity else []),
        "</body></html>",
    ]
    path = atomic_write_text(out / "report.html", "\n".join(parts) + "\n")
    logger.info("wrote %s", path)
    return path


def _details(details: Any) -> str:
    if isinstance(details, Mapping):
        return "\n\n".join(f"{k}:\n{v}" if isinstance(v, str) and "\n" in v else f"{k}: {v}"
                             for k, v in details.items())
    return str(details)


def write_merge_report(out_dir: str | os.PathLike, accuracy: Mapping[str, Mapping[str, float | None]],
                       similarity: Mapping[str, Mapping[str, Mapping[str, float]]], about: Mapping[str, Any],
                       *, title: str = "transferkit merge report") -> Path:
    """A merge's report (:func:`write_task_report` with the merge's reading guide)."""
    return write_task_report(out_dir, accuracy, similarity, about, title=title)
