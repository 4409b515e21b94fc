"""PNG figures for training curves, per-class AP, cross-attention maps and timelines of a long file.

Figures are built as bare :class:`matplotlib.figure.Figure` objects, which
render through the Agg backend when saved, instead of through ``pyplot``: that
keeps no global figure registry (nothing to close, nothing leaks in a long
training run) and never switches the process-wide backend under other code.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

_DPI = 100


def save(fig: Figure, out_png: str | os.PathLike[str]) -> Path:
    """Write ``fig`` to ``out_png`` (its folder made if need be) at the module's resolution; the path."""
    path = Path(out_png)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=_DPI)
    return path


# A line with this many points or more (a per-step loss) is drawn faint under its running mean:
# step-to-step noise would hide the trend.
SMOOTH_FROM = 50


def running_mean(values: Sequence[float], window: int) -> np.ndarray:
    """The mean of each ``window`` consecutive values: ``len(values) - window + 1`` of them."""
    return np.convolve(np.asarray(values, dtype=np.float64), np.ones(window) / window, mode="valid")


def curves_figure(
    metrics: Sequence[Mapping[str, Any]],
    *,
    x: str = "step",
    ys: Sequence[str] = ("loss",),
    title: str | None = None,
) -> Figure:
    """One line per key in ``ys`` against ``x`` over a list of metric records.

    Records are the rows of a training log, where evaluation keys (for example
    ``"eval_mAP"``) appear only on some steps, so a record lacking ``x`` or a
    given y key is skipped for that line rather than treated as an error. A line
    of ``SMOOTH_FROM`` points or more is drawn faint, under the running mean of
    one twentieth of its points; shorter ones are drawn point by point.
    """
    fig = Figure(figsize=(7, 4), layout="constrained")
    ax = fig.add_subplot()
    plotted = 0
    for key in ys:
        points = [(rec[x], rec[key]) for rec in metrics if x in rec and key in rec]
        if not points:
            continue
        xs, vals = zip(*points, strict=True)
        if len(points) < SMOOTH_FROM:
            ax.plot(xs, vals, marker=".", label=key)
        else:
            window = len(points) // 20
            (raw,) = ax.plot(xs, vals, alpha=0.3, linewidth=0.8, label=f"{key} (each {x})")
            # Each mean is drawn at the last point of its window: the curve never runs ahead of the data.
            ax.plot(xs[window - 1:], running_mean(vals, window), color=raw.get_color(),
                    label=f"{key}, mean of the last {window}")
        plotted += 1
    if plotted:
        ax.legend()
    else:
        ax.text(0.5, 0.5, f"no records with {x!r} and any of {list(ys)}", ha="center", va="center",
                transform=ax.transAxes)
    ax.set_xlabel(x)
    ax.grid(alpha=0.3)
    ax.set_title(title if title is not None else ", ".join(ys))
    return fig


def per_class_ap_figure(
    per_class_ap: Sequence[float | None],
    class_names: Sequence[str],
    *,
    title: str | None = None,
    top: int = 40,
) -> Figure:
    """Horizontal bars of per-class AP, best first.

    With many classes (AudioSet has 527) one bar per class is unreadable, so
    only the ``top`` best and the ``top // 4`` worst classes are drawn, with a
    gap row counting the ones in between. Classes whose AP is ``None`` or NaN
    (no positives in the evaluation set) are left out and counted in the title.
    """
    if len(per_class_ap) != len(class_names):
        raise ValueError(f"{len(per_class_ap)} APs but {len(class_names)} class names")
    if top < 1:
        raise ValueError(f"top must be >= 1; got {top}")
    scored = sorted(
        ((float(ap), name) for ap, name in zip(per_class_ap, class_names, strict=True)
         if ap is not None and not math.isnan(ap)),
        reverse=True,
    )
    missing = len(per_class_ap) - len(scored)
    worst = top // 4
    omitted = len(scored) - top - worst
    # None marks the gap row between the best and the worst classes.
    rows: list[tuple[float, str] | None] = (
        [*scored[:top], None, *scored[len(scored) - worst:]] if omitted > 0 else list(scored))

    fig = Figure(figsize=(8, 1.5 + 0.22 * max(len(rows), 1)), layout="constrained")
    ax = fig.add_subplot()
    positions = np.arange(len(rows))
    values = [row[0] if row is not None else 0.0 for row in rows]
    labels = [row[1] if row is not None else f"... {omitted} classes not shown ..." for row in rows]
    ax.barh(positions, values, color="tab:blue")
    ax.set_yticks(positions, labels, fontsize=8)
    # Inverted so the best class is on top, without empty margin rows; one blank row when nothing is scored.
    ax.set_ylim(max(len(rows), 1) - 0.5, -0.5)
    ax.set_xlim(0.0, 1.0)
    ax.set_xlabel("average precision")
    ax.grid(axis="x", alpha=0.3)
    if scored:
        mean_ap = float(np.mean([ap for ap, _ in scored]))
        ax.axvline(mean_ap, color="tab:red", linestyle="--", label=f"mAP {mean_ap:.3f}")
        ax.legend(loc="lower right")
    else:
        ax.text(0.5, 0.5, "no class has a positive", ha="center", va="center", transform=ax.transAxes)
    if title is None:
        title = f"Per-class AP ({len(scored)} classes scored"
        title += f", {missing} without positives not shown)" if missing else ")"
    ax.set_title(title)
    return fig


# The colour map of attention, and how much of a pixel the colour takes where attention is highest:
# the rest stays the frame's own, so the frame shows through everywhere.
ATTENTION_CMAP = "inferno"
OVERLAY_OPACITY = 0.6


def attention_overlay(frame: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``frame`` (H, W, 3) uint8 with ``weights`` (H', W') in [0, 1], one per patch, painted over it.

    Each pixel takes its patch's colour from ``ATTENTION_CMAP`` in proportion to the patch's weight
    (up to ``OVERLAY_OPACITY``), so a patch of weight 0 keeps the frame's pixels exactly. Patches are
    drawn as the blocks of pixels they are, not smoothed: the model sees no finer grid.
    """
    frame, weights = np.asarray(frame), np.clip(np.asarray(weights, dtype=np.float64), 0.0, 1.0)
    if frame.ndim != 3 or frame.shape[-1] != 3 or weights.ndim != 2:
        raise ValueError(f"need an (H, W, 3) frame and (H', W') weights; got {frame.shape} and {weights.shape}")
    height, width = frame.shape[:2]
    rows = np.arange(height) * weights.shape[0] // height
    cols = np.arange(width) * weights.shape[1] // width
    per_pixel = weights[rows][:, cols]  # (H, W): each pixel's patch weight
    colour = colormaps[ATTENTION_CMAP](per_pixel)[..., :3] * 255.0
    mix = (OVERLAY_OPACITY * per_pixel)[..., None]
    return np.rint(frame * (1.0 - mix) + colour * mix).astype(np.uint8)


def video_attention_figure(
    attn: np.ndarray,
    frames: np.ndarray,
    *,
    times: Sequence[float] | None = None,
    title: str | None = None,
) -> Figure:
    """Video frames, one per patch-time step, above the same frames with their attention painted over them.

    ``attn`` is ``(T', H', W')`` attention over the video patch grid and
    ``frames`` the ``(F, H, W, 3)`` uint8 window the model saw, ``times`` the
    frames' times in the clip (seconds) for the panel titles. Patch-time step
    ``t`` covers frames ``[t F / T', (t + 1) F / T')``; its middle frame is
    shown, one column per step, left to right. All panels share one colour scale,
    from ``attn``'s minimum (the frame alone) to its maximum, so attention is
    comparable across time.
    """
    attn = np.asarray(attn, dtype=np.float64)
    frames = np.asarray(frames)
    if attn.ndim != 3:
        raise ValueError(f"attn must be (T', H', W'); got shape {attn.shape}")
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be (F, H, W, 3); got shape {frames.shape}")
    if times is not None and len(times) != frames.shape[0]:
        raise ValueError(f"{len(times)} times for {frames.shape[0]} frames")
    steps, num_frames = attn.shape[0], frames.shape[0]
    norm = Normalize(vmin=float(attn.min()), vmax=float(attn.max()))
    scaled = norm(attn).filled(0.0)  # a flat map (vmin == vmax) is all 0: nothing painted over the frames

    fig = Figure(figsize=(1.9 * steps + 1.2, 4.4), layout="constrained")
    # The frames alone above, the same frames with attention below: a colour in the clip (a yellow
    # border, say) is not mistaken for attention.
    axes = fig.subplots(2, steps, squeeze=False)
    for t in range(steps):
        index = min(num_frames - 1, int((t + 0.5) * num_frames / steps))
        # Nearest-neighbour display: small frames (32 px in configs/tiny.yaml) stay sharp, patches square.
        axes[0, t].imshow(frames[index], interpolation="nearest")
        axes[1, t].imshow(attention_overlay(frames[index], scaled[t]), interpolation="nearest")
        axes[0, t].set_title(f"frame {index}" + (f", {times[index]:.2f} s" if times is not None else ""), fontsize=8)
        for ax in axes[:, t]:
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0, 0].set_ylabel("clip", fontsize=8)
    axes[1, 0].set_ylabel("attention", fontsize=8)
    fig.colorbar(ScalarMappable(norm=norm, cmap=ATTENTION_CMAP), ax=axes[1], shrink=0.9, label="attention")
    if title is not None:
        fig.suptitle(title, fontsize=9)
    return fig


def audio_attention_figure(attn: np.ndarray, signal: np.ndarray, *, title: str | None = None) -> Figure:
    """A waveform ``(S,)`` or spectrogram ``(F, n_mels)`` above its attention over time ``(T',)``.

    Attention step ``i`` is drawn over the span of the signal's time axis that
    its patch covers, on a shared x axis, so peaks line up with the sound.
    """
    attn = np.asarray(attn, dtype=np.float64)
    signal = np.asarray(signal, dtype=np.float64)
    if attn.ndim != 1:
        raise ValueError(f"attn must be (T',); got shape {attn.shape}")
    if signal.ndim not in (1, 2):
        raise ValueError(f"signal must be a (S,) waveform or an (F, n_mels) spectrogram; got {signal.shape}")
    length = signal.shape[0]

    fig = Figure(figsize=(9, 4.5), layout="constrained")
    ax_signal, ax_attn = fig.subplots(2, 1, sharex=True, height_ratios=(3, 1))
    if signal.ndim == 1:
        ax_signal.plot(np.arange(length), signal, linewidth=0.5)
        ax_signal.set_ylabel("amplitude")
        ax_attn.set_xlabel("sample")
    else:
        ax_signal.imshow(signal.T, origin="lower", aspect="auto", cmap="magma",
                         extent=(0, length, 0, signal.shape[1]))
        ax_signal.set_ylabel("mel bin")
        ax_attn.set_xlabel("spectrogram frame")
    ax_attn.stairs(attn, np.linspace(0, length, attn.shape[0] + 1), fill=True, color="tab:orange")
    ax_attn.set_ylabel("attention")
    ax_attn.set_xlim(0, length)
    if title is not None:
        fig.suptitle(title)
    return fig


def timeline_figure(
    starts: np.ndarray,
    scores: np.ndarray,
    class_names: Sequence[str],
    *,
    window_s: float,
    hop_s: float,
    spectrogram: np.ndarray | None,
    spectrogram_hop_s: float,
    top: int = 5,
    title: str | None = None,
) -> Figure:
    """Per-window class scores over a long file, above the spectrogram of its sound.

    ``starts`` (W,) are the windows' starts (seconds), ``window_s`` long and ``hop_s`` apart, and
    ``scores`` (W, C) their sigmoid scores. The ``top`` classes whose highest score is highest are
    the rows of a heatmap on one colour scale, [0, 1], each window drawn over the middle ``hop_s`` of
    its span, with a dot on each window's top class. Under it, on the same time axis, the
    ``spectrogram`` (T, n_mels) (a column every ``spectrogram_hop_s`` seconds from 0, NaN columns
    left blank), or "no sound" when it is None.
    """
    starts, scores = np.asarray(starts, dtype=np.float64), np.asarray(scores, dtype=np.float64)
    if scores.shape != (len(starts), len(class_names)) or not len(starts):
        raise ValueError(f"need (windows, classes) scores for {len(starts)} starts and {len(class_names)} "
                         f"classes; got {scores.shape}")
    if top < 1:
        raise ValueError(f"top must be >= 1; got {top}")
    rows = np.argsort(-scores.max(axis=0), kind="stable")[:top]  # the classes that score highest anywhere
    fig = Figure(figsize=(12, 3.6 + 0.3 * len(rows)), layout="constrained")
    ax_scores, ax_sound = fig.subplots(2, 1, sharex=True, height_ratios=(1.0 + 0.3 * len(rows), 2.2))
    # Each window is drawn over the middle hop of its span: the columns tile the time axis.
    left, right = starts[0] + (window_s - hop_s) / 2, starts[-1] + (window_s + hop_s) / 2
    image = ax_scores.imshow(scores[:, rows].T, aspect="auto", cmap="viridis", vmin=0.0, vmax=1.0,
                             interpolation="nearest", extent=(left, right, len(rows) - 0.5, -0.5))
    ax_scores.set_yticks(np.arange(len(rows)), [class_names[i] for i in rows], fontsize=8)
    # A dot on each window's top class (when it is one of the rows): the tag a reader follows.
    best = scores.argmax(axis=1)
    shown = np.isin(best, rows)
    row_of = {int(c): r for r, c in enumerate(rows)}
    ax_scores.scatter(starts[shown] + window_s / 2, [row_of[int(c)] for c in best[shown]], s=4, color="white")
    fig.colorbar(image, ax=ax_scores, label="score", pad=0.01)
    end = right
    if spectrogram is None:
        ax_sound.text(0.5, 0.5, "no sound", ha="center", va="center", transform=ax_sound.transAxes)
        ax_sound.set_yticks([])
    else:
        finite = spectrogram[np.isfinite(spectrogram)]
        low, high = np.percentile(finite, [5, 99.5]) if finite.size else (0.0, 1.0)
        end = max(end, spectrogram.shape[0] * spectrogram_hop_s)
        sound = ax_sound.imshow(spectrogram.T, origin="lower", aspect="auto", cmap="magma", vmin=low, vmax=high,
                                interpolation="nearest",
                                extent=(0, spectrogram.shape[0] * spectrogram_hop_s, 0, spectrogram.shape[1]))
        ax_sound.set_ylabel("mel band")
        fig.colorbar(sound, ax=ax_sound, label="log power", pad=0.01)
    ax_sound.set_xlim(min(0.0, left), end)
    ax_sound.set_xlabel("time in the file (s)")
    ax_scores.set_title(title if title is not None else f"top {len(rows)} classes, {len(starts)} windows")
    return fig
