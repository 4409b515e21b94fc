"""PNG figures for training curves, per-class AP and cross-attention maps.

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
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

_DPI = 100


def _save(fig: Figure, out_png: str | os.PathLike[str]) -> Path:
    path = Path(out_png)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=_DPI)
    return path


def plot_curves(
    metrics: Sequence[Mapping[str, Any]],
    out_png: str | os.PathLike[str],
    *,
    x: str = "step",
    ys: Sequence[str] = ("loss",),
    title: str | None = None,
) -> Path:
    """One line per key in ``ys`` against ``x`` over a list of metric records.

    Records are the rows of a training log, where evaluation keys (for example
    ``"eval_mAP"``) appear only on some steps, so a record lacking ``x`` or a
    given y key is skipped for that line rather than treated as an error.
    """
    fig = Figure(figsize=(7, 4), layout="constrained")
    ax = fig.add_subplot()
    plotted = 0
    for key in ys:
        points = [(rec[x], rec[key]) for rec in metrics if x in rec and key in rec]
        if points:
            xs, vals = zip(*points, strict=True)
            ax.plot(xs, vals, marker="." if len(points) < 50 else None, label=key)
            plotted += 1
    if plotted:
        ax.legend()
    else:
        ax.text(0.5, 0.5, f"no records with {x!r} and any of {list(ys)}", ha="center", va="center",
                transform=ax.transAxes)
    ax.set_xlabel(x)
    ax.grid(alpha=0.3)
    ax.set_title(title if title is not None else ", ".join(ys))
    return _save(fig, out_png)


def plot_per_class_ap(
    per_class_ap: Sequence[float | None],
    class_names: Sequence[str],
    out_png: str | os.PathLike[str],
    *,
    title: str | None = None,
    top: int = 40,
) -> Path:
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
    if omitted > 0:
        # None marks the gap row between the best and the worst classes.
        rows: list[tuple[float, str] | None] = [*scored[:top], None, *scored[len(scored) - worst:]]
    else:
        rows = list(scored)

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
    return _save(fig, out_png)


def plot_attention_video(
    attn: np.ndarray,
    frames: np.ndarray,
    out_png: str | os.PathLike[str],
    *,
    title: str | None = None,
) -> Path:
    """A row of video frames, one per patch-time step, each overlaid with its attention heat map.

    ``attn`` is ``(T', H', W')`` attention over the video patch grid and
    ``frames`` the ``(F, H, W, 3)`` uint8 clip. Patch-time step ``t`` covers
    frames ``[t F / T', (t + 1) F / T')``; its middle frame is shown. All
    panels share one colour scale so attention is comparable across time.
    """
    attn = np.asarray(attn, dtype=np.float64)
    frames = np.asarray(frames)
    if attn.ndim != 3:
        raise ValueError(f"attn must be (T', H', W'); got shape {attn.shape}")
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be (F, H, W, 3); got shape {frames.shape}")
    steps = attn.shape[0]
    num_frames, height, width = frames.shape[:3]
    norm = Normalize(vmin=float(attn.min()), vmax=float(attn.max()))

    fig = Figure(figsize=(2.2 * steps + 1.0, 2.8), layout="constrained")
    axes = fig.subplots(1, steps, squeeze=False)[0]
    heat = None
    for t, ax in enumerate(axes):
        index = min(num_frames - 1, int((t + 0.5) * num_frames / steps))
        ax.imshow(frames[index])
        # Stretching the coarse patch grid over the frame's pixel extent lets
        # matplotlib's resampler do the upsampling.
        heat = ax.imshow(attn[t], cmap="inferno", norm=norm, alpha=0.5, interpolation="bilinear",
                         extent=(-0.5, width - 0.5, height - 0.5, -0.5))
        ax.set_title(f"frame {index}", fontsize=8)
        ax.set_axis_off()
    fig.colorbar(heat, ax=axes, shrink=0.8, label="attention")
    if title is not None:
        fig.suptitle(title)
    return _save(fig, out_png)


def plot_attention_audio(
    attn: np.ndarray,
    signal: np.ndarray,
    out_png: str | os.PathLike[str],
    *,
    title: str | None = None,
) -> Path:
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
    return _save(fig, out_png)
