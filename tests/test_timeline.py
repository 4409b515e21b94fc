"""jobs/predict.py --timeline and perceiver.timeline: a long file tagged window by window, in bounded memory."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
import torch

from jobs import predict
from perceiver import timeline
from perceiver.classifier import AVClassifier
from perceiver.clips import clip_scores, read_clip
from perceiver.config import Config, load_config
from perceiver.loader import assemble
from perceiver.saved import load_model, save_model
from pipeline import storage
from pipeline.audio import AudioRecipe, log_mel
from pipeline.synthetic import CLASSES, write_changing_clip, write_clip

ROOT = Path(__file__).resolve().parents[1]
# Small sources: the model's 32 px frames at 8 fps come from any size; cheap to write and to decode.
SOURCE = dict(fps=8.0, width=48, height=48, sample_rate=16000)
LONG_SOURCE = dict(fps=4.0, width=32, height=32, sample_rate=16000)  # frames shown twice at 8 fps: half the work
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
NUM_CLASSES = len(CLASSES)


def _classes() -> list[dict]:
    return [{"index": c.index, "mid": c.mid, "name": c.display_name} for c in CLASSES]


def _save_untrained(root: Path, cfg: Config) -> Path:
    torch.manual_seed(0)
    save_model(storage.locate(root), AVClassifier(cfg, NUM_CLASSES).eval(), cfg, classes=_classes(), recipe={})
    return root / "model.pt"


@dataclass
class Setup:
    checkpoint: Path
    files: dict[str, Path]  # "av" (8 s, its classes change at 4 s), "no_video", "no_audio", "bad"


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Setup:
    root = tmp_path_factory.mktemp("timeline")
    files = {name: root / f"{name}.mp4" for name in ("av", "no_video", "no_audio", "bad")}
    write_changing_clip(files["av"], parts=[(4.0, (0, 4)), (4.0, (1, 7))], **SOURCE)
    write_clip(files["no_video"], seconds=5.0, labels=(5,), video=False, **SOURCE)
    write_clip(files["no_audio"], seconds=5.5, labels=(2,), audio=False, **SOURCE)
    files["bad"].write_bytes(b"not a media file\n" * 50)
    return Setup(_save_untrained(root / "run", load_config(ROOT / "configs/tiny.yaml")), files)


def _rows(path: str) -> list[list[str]]:
    with open(path, newline="") as f:
        return list(csv.reader(f))


# ---------------------------------------------------------------- the plan and the spectrogram


def test_windows_tile_the_file_on_the_grid_and_every_chunk_holds_whole_windows(setup: Setup) -> None:
    model, cfg, _ = load_model(str(setup.checkpoint))
    mods = model.modalities  # tiny: 1 s windows, 2 s chunks, a 1/8 s grid
    default = timeline.plan(setup.files["no_audio"], cfg.data, mods)  # 5.5 s
    assert (default.windows, default.hop_s, default.window_s, default.per_chunk) == (5, 1.0, 1.0, 2)
    rounded = timeline.plan(setup.files["no_video"], cfg.data, mods, hop_s=0.3)  # 5.0 s; 0.3 s -> 2 steps
    assert (rounded.hop_s, rounded.windows, rounded.per_chunk) == (0.25, 17, 5)
    for p in (default, rounded):
        starts = [start + o for start, offsets in p.chunks() for o in offsets]
        np.testing.assert_allclose(starts, np.arange(p.windows) * p.hop_s)
        assert all(o + p.window_s <= cfg.data.segment_seconds + 1e-9 for _, offsets in p.chunks() for o in offsets)
        assert starts[-1] + p.window_s <= p.duration_s + 1e-9
    sparse = timeline.plan(setup.files["av"], cfg.data, mods, hop_s=3.0)  # hops over more than a chunk
    assert [(start, offsets) for start, offsets in sparse.chunks()] == [(0.0, [0.0]), (3.0, [0.0]), (6.0, [0.0])]
    with pytest.raises(ValueError, match="hop_s"):
        timeline.plan(setup.files["av"], cfg.data, mods, hop_s=0.0)


def test_a_spectrogram_built_from_chunks_equals_one_of_the_whole_waveform() -> None:
    rate = 22050  # a column of 1102 samples: chunk edges fall inside columns
    wave = np.random.default_rng(0).uniform(-0.5, 0.5, 13 * rate).astype(np.float32)
    whole = timeline.Spectrogram(rate, 13.0)
    whole.add(wave, 0.0)
    expected = whole.image()
    frame = round(timeline.SPECTROGRAM_FRAME_S * rate)
    direct = log_mel(wave[:expected.shape[0] * frame], AudioRecipe(sample_rate=rate, n_mels=64, n_fft=frame,
                                                                    hop_length=frame))
    assert whole.pool == 1 and expected.shape == (13 * rate // whole.size, 64) and not np.isnan(expected).any()
    np.testing.assert_allclose(expected[:direct.shape[0]], direct)

    chunked = timeline.Spectrogram(rate, 13.0)
    for start_s, seconds in ((0.0, 2.0), (2.0, 2.0), (3.1, 2.0), (5.1, 9.0)):  # abutting, overlapping, past the end
        first = round(start_s * rate)
        chunked.add(wave[first:first + round(seconds * rate)], start_s)
    np.testing.assert_allclose(chunked.image(), expected, rtol=1e-5, atol=1e-5)

    gappy = timeline.Spectrogram(rate, 13.0)
    gappy.add(wave[:2 * rate], 0.0)
    gappy.add(wave[6 * rate:8 * rate], 6.0)
    image, hop = gappy.image(), gappy.hop_s
    gap = np.isnan(image).all(axis=1)
    assert not gap[:int(2 / hop)].any() and gap[int(2 / hop) + 1:int(6 / hop)].all() and gap[int(8 / hop) + 1:].all()
    np.testing.assert_allclose(image[int(6 / hop) + 1:int(8 / hop)], expected[int(6 / hop) + 1:int(8 / hop)],
                               rtol=1e-5, atol=1e-5)

    long = timeline.Spectrogram(rate, 4 * 3600.0)  # four hours: columns pooled to the picture's bound
    assert long.columns <= timeline.SPECTROGRAM_COLUMNS and long.pool > 1


# ---------------------------------------------------------------- scoring


def test_each_window_scores_as_the_model_scores_that_window_of_the_decoded_file(setup: Setup) -> None:
    model, cfg, classes = load_model(str(setup.checkpoint))
    mods = model.modalities
    p = timeline.plan(setup.files["av"], cfg.data, mods, hop_s=0.5)
    calls: list[int] = []
    result = timeline.score(model, p, cfg.data, num_classes=len(classes), batch_size=2, device=torch.device("cpu"),
                            progress=calls.append)
    assert sum(calls) == p.windows == len(result.starts) == 15 and max(calls) == 2
    assert result.scores.shape == (15, NUM_CLASSES) and result.absent == [] and result.end_s is None
    assert all(flags.all() for flags in result.present.values())
    # The first chunk is the segment predict decodes: its windows must score alike there.
    first = read_clip(setup.files["av"], cfg.data, mods)
    offsets = [0.0, 0.5, 1.0]
    expected = clip_scores(model, assemble([first] * 3, [[o] for o in offsets], mods, len(classes)).to(torch.device("cpu")))
    np.testing.assert_allclose(result.scores[:3], expected, atol=1e-6)
    assert result.spectrogram is not None and result.spectrogram.shape == (160, timeline.SPECTROGRAM_MELS)

    # A container that states more than its streams hold: the first chunk with nothing ends the timeline.
    stated = replace(p, duration_s=20.0, windows=39)
    cut = timeline.score(model, stated, cfg.data, num_classes=len(classes), batch_size=4, device=torch.device("cpu"))
    assert cut.end_s == 9.0 and len(cut.starts) == 18  # the chunk from 7.5 s still held sound and frames
    np.testing.assert_allclose(cut.scores[:15], result.scores, atol=1e-6)


def test_the_job_writes_timelines_of_files_missing_a_stream_and_goes_on_past_a_bad_one(
        setup: Setup, tmp_path: Path) -> None:
    f = setup.files
    out = tmp_path / "out"
    job = subprocess.run([sys.executable, "jobs/predict.py", "--checkpoint", str(setup.checkpoint), "--timeline",
                          "--out", str(out), "--hop", "0.5", "--top-k", "3", "--json",
                          str(f["no_video"]), str(f["bad"]), str(f["no_audio"]), str(f["av"])],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert job.returncode == 1, job.stderr
    errors = [ln for ln in job.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(f"error: {f['bad']}: cannot decode:") and "[unreadable]" in errors[0]
    assert "window" in job.stderr  # the progress bars
    results = {r["file"]: r for r in map(json.loads, job.stdout.splitlines())}
    assert results[str(f["bad"])]["error"] == "unreadable"
    expect = {"no_video": (9, ["no video stream: audio-only timeline"], {"audio": 1, "video": 0}),
              "no_audio": (10, ["no audio stream: video-only timeline"], {"audio": 0, "video": 1}),
              "av": (15, [], {"audio": 1, "video": 1})}
    names = [c["name"] for c in _classes()]
    for name, (windows, notes, present) in expect.items():
        r = results[str(f[name])]
        assert (r["windows"], r["notes"], r["window_s"], r["hop_s"]) == (windows, notes, 1.0, 0.5)
        assert r["outputs"] == {k: str(out / f"{name}.timeline.{k}") for k in ("csv", "json", "png")}
        header, *rows = _rows(r["outputs"]["csv"])
        assert header == ["start_s", "end_s", "present_audio", "present_video", *names]
        assert len(rows) == windows and all(len(row) == len(header) for row in rows)
        assert [float(row[0]) for row in rows] == [0.5 * k for k in range(windows)]
        assert {m: {int(row[2 + i]) for row in rows} for i, m in enumerate(("audio", "video"))} == \
            {m: {v} for m, v in present.items()}
        record = json.loads(Path(r["outputs"]["json"]).read_text())
        assert record["notes"] == notes and [c["name"] for c in record["classes"]] == names
        assert len(record["windows"]) == windows
        for row, window in zip(rows, record["windows"], strict=True):
            assert window["present"] == {m: bool(v) for m, v in present.items()}
            assert window["scores"] == pytest.approx([float(v) for v in row[4:]], abs=2e-6)
        png = Path(r["outputs"]["png"]).read_bytes()
        assert png[:8] == PNG_SIGNATURE and len(png) > 20_000


def test_timeline_options_are_checked(capsys: pytest.CaptureFixture[str]) -> None:
    for argv, message in ((["--timeline", "a.mp4"], "needs --out"),
                          (["--timeline", "--out", "o", "--crops", "2", "a.mp4"], "--crops does not go"),
                          (["--timeline", "--out", "o", "--hop", "0", "a.mp4"], "--hop must be > 0"),
                          (["--timeline", "--out", "o", "x/a.mp4", "y/a.mkv"], "named 'a.timeline'"),
                          (["--hop", "1", "a.mp4"], "go with --timeline")):
        with pytest.raises(SystemExit) as exit_:
            predict.parse_args(["--checkpoint", "m.pt", *argv])
        assert exit_.value.code == 2 and message in capsys.readouterr().err


# ---------------------------------------------------------------- memory

# Run in a child: the job's own main, with the resident-size peak reset once the model is loaded,
# and from then on the peak of what Python and numpy hold (tracemalloc sees every numpy buffer:
# decoded chunks, audio, spectrogram, scores), which unlike the resident size does not depend on
# how the C allocator reuses freed memory.
_MEASURE = """
import json, sys, tracemalloc
from pathlib import Path
from jobs import predict

def kb(key):
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(key + ":"))

marks = {}
load = predict.load_model

def load_then_mark(path):
    loaded = load(path)
    import torchvision.io  # code, not data: JPEG frames import it when first decoded (tens of MB of code objects)
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    marks["baseline_kb"] = kb("VmRSS")
    tracemalloc.start()
    return loaded

predict.load_model = load_then_mark
rc = predict.main(sys.argv[1:])
print(json.dumps({"rc": rc, **marks, "peak_kb": kb("VmHWM"), "traced_peak_kb": tracemalloc.get_traced_memory()[1] // 1024}))
"""


@pytest.mark.slow
def test_memory_does_not_grow_with_the_files_length(tmp_path: Path) -> None:
    cfg = load_config(ROOT / "configs/tiny.yaml", ["data.segment_seconds=10", "data.video.stored_size=224"])
    checkpoint = _save_untrained(tmp_path / "run", cfg)
    v, a = cfg.data.video, cfg.data.audio
    per_minute_mb = 60 * (v.fps * v.stored_size**2 * 3 + a.sample_rate * 4) / 2**20  # decoded, uint8 + float32
    assert 2 * per_minute_mb >= 140
    runs = {}
    for minutes in (2, 4):
        path = tmp_path / f"long{minutes}.mp4"
        write_clip(path, seconds=60.0 * minutes, labels=(0, 4), **LONG_SOURCE)
        runs[minutes] = subprocess.Popen(
            [sys.executable, "-c", _MEASURE, "--checkpoint", str(checkpoint), "--timeline", "--out",
             str(tmp_path / "out"), str(path)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    growth, traced = {}, {}
    for minutes, child in runs.items():
        stdout, stderr = child.communicate(timeout=300)
        measured = json.loads(stdout.splitlines()[-1])
        assert child.returncode == 0 and measured["rc"] == 0, stderr
        growth[minutes] = (measured["peak_kb"] - measured["baseline_kb"]) / 1024
        traced[minutes] = measured["traced_peak_kb"] / 1024
        rows = _rows(str(tmp_path / "out" / f"long{minutes}.timeline.csv"))
        assert len(rows) == 1 + 60 * minutes
    extra_mb = 2 * per_minute_mb  # what holding the 2 more minutes decoded would add
    print(f"peak growth over the loaded model, 2 min / 4 min: resident {growth[2]:.1f} / {growth[4]:.1f} MB, "
          f"Python and numpy {traced[2]:.1f} / {traced[4]:.1f} MB; 2 more minutes decoded: {extra_mb:.0f} MB")
    # What the code holds: one chunk and one batch, plus the kept scores and a spectrogram of at most 1 MB.
    assert traced[4] <= traced[2] + 2, traced
    assert traced[4] < extra_mb / 2, traced
    # The resident size also counts the C allocator's reuse of freed chunks, which varies from machine to
    # machine (CI has seen 55 MB more at 6 minutes than at 3); a file held whole would add extra_mb.
    assert growth[4] <= growth[2] + extra_mb / 2, growth


# ---------------------------------------------------------------- a trained model


@pytest.mark.slow
def test_the_top_class_changes_within_two_windows_of_where_the_sound_does(e2e, tmp_path: Path) -> None:
    before, after = 4, 7  # "Low tone", then "Noise bursts"; the picture shows no class
    path = write_changing_clip(tmp_path / "change.mp4", parts=[(90.0, (before,)), (90.0, (after,))], **SOURCE)
    model, cfg, classes = load_model(str(e2e.run / "model.pt"))
    p = timeline.plan(path, cfg.data, model.modalities)
    result = timeline.score(model, p, cfg.data, num_classes=len(classes), batch_size=16, device=torch.device("cpu"))
    assert p.windows == len(result.starts) == 180 and p.window_s == 1.0
    top = result.scores.argmax(axis=1)
    change = 90  # the first window wholly after the change
    assert (top[:change - 2] == before).all() and (top[change + 2:] == after).all(), top.tolist()
    switches = np.flatnonzero(top[1:] != top[:-1]) + 1
    assert len(switches) and all(abs(s - change) <= 2 for s in switches), switches
