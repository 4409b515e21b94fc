from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
from matplotlib import colormaps

from perceiver.plots import (
    ATTENTION_CMAP,
    OVERLAY_OPACITY,
    attention_overlay,
    audio_attention_figure,
    curves_figure,
    per_class_ap_figure,
    save,
    video_attention_figure,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_valid_png(path: Path) -> np.ndarray:
    assert path.is_file()
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    pixels = matplotlib.image.imread(path)
    assert pixels.ndim == 3 and pixels.shape[0] > 50 and pixels.shape[1] > 50
    assert pixels.min() != pixels.max()
    return pixels


def test_curves_skips_missing_keys(tmp_path: Path) -> None:
    records = [{"step": s, "loss": 1.0 / (s + 1)} for s in range(20)]
    for rec in records[::5]:
        rec["eval_mAP"] = rec["step"] / 20
    records.append({"epoch": 3})  # no x key at all
    out = save(curves_figure(records, ys=("loss", "eval_mAP", "absent"), title="t"), tmp_path / "sub" / "curves.png")
    assert out == tmp_path / "sub" / "curves.png"
    assert_valid_png(out)


def test_a_per_step_curve_is_drawn_faint_under_its_running_mean() -> None:
    rng = np.random.default_rng(0)
    records = [{"step": s, "loss": 1.0 / s + rng.random()} for s in range(1, 301)]
    records += [{"step": s, "eval_mAP": s / 300} for s in (100, 200, 300)]
    fig = curves_figure(records, ys=("loss", "eval_mAP"))
    raw, smooth, evals = fig.axes[0].get_lines()
    losses = [r["loss"] for r in records[:300]]
    np.testing.assert_array_equal(raw.get_xdata(), range(1, 301))
    np.testing.assert_array_equal(raw.get_ydata(), losses)
    window = 300 // 20
    # Each point of the smoothed line is the mean of the last 15 steps up to its own.
    np.testing.assert_array_equal(smooth.get_xdata(), range(window, 301))
    np.testing.assert_allclose(smooth.get_ydata(), [np.mean(losses[i - window:i]) for i in range(window, 301)])
    assert raw.get_color() == smooth.get_color() and raw.get_alpha() < 1
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert labels == ["loss (each step)", "loss, mean of the last 15", "eval_mAP"]
    # Three evaluations are three marked points, not smoothed away.
    np.testing.assert_array_equal(evals.get_xdata(), [100, 200, 300])
    assert evals.get_marker() == "."


def test_curves_with_no_matching_records(tmp_path: Path) -> None:
    assert_valid_png(save(curves_figure([{"step": 1}], ys=("eval_mAP",)), tmp_path / "empty.png"))


def test_per_class_ap_handles_none(tmp_path: Path) -> None:
    aps = [0.9, None, 0.1, 0.5, float("nan")]
    names = [f"class {i}" for i in range(5)]
    assert_valid_png(save(per_class_ap_figure(aps, names), tmp_path / "ap.png"))


def test_per_class_ap_many_classes_is_truncated(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    aps: list[float | None] = list(rng.random(527))
    aps[7] = None
    names = [f"class {i}" for i in range(527)]
    pixels = assert_valid_png(save(per_class_ap_figure(aps, names, top=40), tmp_path / "ap.png"))
    # 40 best + gap row + 10 worst, at 0.22 in per row: far shorter than 527 rows would be.
    assert pixels.shape[0] < 100 * (1.5 + 0.22 * 60)


def test_per_class_ap_without_positives(tmp_path: Path) -> None:
    assert_valid_png(save(per_class_ap_figure([None, None], ["a", "b"]), tmp_path / "ap.png"))


def test_per_class_ap_rejects_mismatched_names() -> None:
    with pytest.raises(ValueError):
        per_class_ap_figure([0.5], ["a", "b"])


def test_attention_video(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    attn = rng.random((4, 7, 7))
    frames = rng.integers(0, 256, size=(8, 56, 56, 3), dtype=np.uint8)
    assert_valid_png(save(video_attention_figure(attn, frames, title="video"), tmp_path / "video.png"))


def test_attention_overlay_keeps_the_frame_where_attention_is_zero_and_paints_where_it_is_high() -> None:
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
    np.testing.assert_array_equal(attention_overlay(frame, np.zeros((4, 4))), frame)
    weights = np.zeros((4, 4))
    weights[1, 2] = 1.0  # the patch of rows 8-15, columns 16-23
    painted = attention_overlay(frame, weights)
    top = np.array(colormaps[ATTENTION_CMAP](1.0)[:3]) * 255
    expected = np.rint(frame[8:16, 16:24] * (1 - OVERLAY_OPACITY) + top * OVERLAY_OPACITY).astype(np.uint8)
    np.testing.assert_array_equal(painted[8:16, 16:24], expected)
    outside = np.ones((32, 32), bool)
    outside[8:16, 16:24] = False
    np.testing.assert_array_equal(painted[outside], frame[outside])


def test_the_video_picture_shows_the_frames_themselves_with_their_times() -> None:
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 256, size=(8, 32, 32, 3), dtype=np.uint8)
    attn = np.zeros((4, 4, 4))
    attn[2, 0, 0] = 0.3  # one patch of the third time step holds all attention
    times = [0.5 + i / 8 for i in range(8)]
    fig = video_attention_figure(attn, frames, times=times)
    panels = [ax for ax in fig.axes if ax.images]
    plain, painted = panels[:4], panels[4:]
    assert len(painted) == 4
    assert [ax.get_title() for ax in plain] == ["frame 1, 0.62 s", "frame 3, 0.88 s", "frame 5, 1.12 s",
                                                "frame 7, 1.38 s"]
    for t in range(4):
        index = 2 * t + 1
        np.testing.assert_array_equal(np.asarray(plain[t].images[0].get_array()), frames[index])
        shown = np.asarray(painted[t].images[0].get_array())
        if t != 2:  # no attention at all: the decoded frame, pixel for pixel
            np.testing.assert_array_equal(shown, frames[index])
        else:  # the attended patch at full strength (the map's maximum), the rest of the frame untouched
            strongest = np.zeros((4, 4))
            strongest[0, 0] = 1.0
            np.testing.assert_array_equal(shown, attention_overlay(frames[index], strongest))
            assert not np.array_equal(shown[:8, :8], frames[index][:8, :8])
    with pytest.raises(ValueError, match="times"):
        video_attention_figure(attn, frames, times=times[:3])


def test_attention_video_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError):
        video_attention_figure(np.zeros((4, 7)), np.zeros((8, 56, 56, 3), np.uint8))
    with pytest.raises(ValueError):
        video_attention_figure(np.zeros((4, 7, 7)), np.zeros((8, 56, 56)))


@pytest.mark.parametrize("signal_shape", [(4800,), (100, 64)])
def test_attention_audio(tmp_path: Path, signal_shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(0)
    out = save(audio_attention_figure(rng.random(16), rng.standard_normal(signal_shape)), tmp_path / "audio.png")
    assert_valid_png(out)


def test_attention_audio_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError):
        audio_attention_figure(np.zeros((2, 8)), np.zeros(100))
    with pytest.raises(ValueError):
        audio_attention_figure(np.zeros(8), np.zeros((2, 3, 4)))
