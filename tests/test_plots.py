from pathlib import Path

import matplotlib.image
import numpy as np
import pytest

from perceiver.plots import plot_attention_audio, plot_attention_video, plot_curves, plot_per_class_ap

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_valid_png(path: Path) -> np.ndarray:
    assert path.is_file()
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    pixels = matplotlib.image.imread(path)
    assert pixels.ndim == 3 and pixels.shape[0] > 50 and pixels.shape[1] > 50
    assert pixels.min() != pixels.max()
    return pixels


def test_plot_curves_skips_missing_keys(tmp_path: Path) -> None:
    records = [{"step": s, "loss": 1.0 / (s + 1)} for s in range(20)]
    for rec in records[::5]:
        rec["eval_mAP"] = rec["step"] / 20
    records.append({"epoch": 3})  # no x key at all
    out = plot_curves(records, tmp_path / "sub" / "curves.png", ys=("loss", "eval_mAP", "absent"), title="t")
    assert out == tmp_path / "sub" / "curves.png"
    assert_valid_png(out)


def test_plot_curves_with_no_matching_records(tmp_path: Path) -> None:
    assert_valid_png(plot_curves([{"step": 1}], tmp_path / "empty.png", ys=("eval_mAP",)))


def test_plot_per_class_ap_handles_none(tmp_path: Path) -> None:
    aps = [0.9, None, 0.1, 0.5, float("nan")]
    names = [f"class {i}" for i in range(5)]
    assert_valid_png(plot_per_class_ap(aps, names, tmp_path / "ap.png"))


def test_plot_per_class_ap_many_classes_is_truncated(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    aps: list[float | None] = list(rng.random(527))
    aps[7] = None
    names = [f"class {i}" for i in range(527)]
    pixels = assert_valid_png(plot_per_class_ap(aps, names, tmp_path / "ap.png", top=40))
    # 40 best + gap row + 10 worst, at 0.22 in per row: far shorter than 527 rows would be.
    assert pixels.shape[0] < 100 * (1.5 + 0.22 * 60)


def test_plot_per_class_ap_without_positives(tmp_path: Path) -> None:
    assert_valid_png(plot_per_class_ap([None, None], ["a", "b"], tmp_path / "ap.png"))


def test_plot_per_class_ap_rejects_mismatched_names(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        plot_per_class_ap([0.5], ["a", "b"], tmp_path / "ap.png")


def test_plot_attention_video(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    attn = rng.random((4, 7, 7))
    frames = rng.integers(0, 256, size=(8, 56, 56, 3), dtype=np.uint8)
    assert_valid_png(plot_attention_video(attn, frames, tmp_path / "video.png", title="video"))


def test_plot_attention_video_rejects_bad_shapes(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        plot_attention_video(np.zeros((4, 7)), np.zeros((8, 56, 56, 3), np.uint8), tmp_path / "v.png")
    with pytest.raises(ValueError):
        plot_attention_video(np.zeros((4, 7, 7)), np.zeros((8, 56, 56)), tmp_path / "v.png")


@pytest.mark.parametrize("signal_shape", [(4800,), (100, 64)])
def test_plot_attention_audio(tmp_path: Path, signal_shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(0)
    out = plot_attention_audio(rng.random(16), rng.standard_normal(signal_shape), tmp_path / "audio.png")
    assert_valid_png(out)


def test_plot_attention_audio_rejects_bad_shapes(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        plot_attention_audio(np.zeros((2, 8)), np.zeros(100), tmp_path / "a.png")
    with pytest.raises(ValueError):
        plot_attention_audio(np.zeros(8), np.zeros((2, 3, 4)), tmp_path / "a.png")
