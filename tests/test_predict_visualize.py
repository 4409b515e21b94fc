"""jobs/predict.py and jobs/visualize.py on real mp4 clips, and the perceiver.clips library under them."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
import torch

from jobs import visualize
from perceiver.classifier import AVClassifier
from perceiver.clips import (
    attention_grids,
    clip_batch,
    pool_attention,
    read_clip,
    read_stored_sample,
    split_tokens,
)
from perceiver.config import Config, load_config
from perceiver.loader import window_starts
from perceiver.plots import video_attention_figure
from perceiver.saved import save_model
from pipeline import modality, shards, storage
from pipeline.dataset import open_dataset
from pipeline.decode import decode_at_recipe
from pipeline.encode import EncodeOptions, encode_clip
from pipeline.recipe import modalities_of, recipe_record
from pipeline.records import ClipRow
from pipeline.synthetic import write_clip
from pipeline.video import Video

ROOT = Path(__file__).resolve().parents[1]
CLIP = dict(seconds=2.0, fps=16.0, width=96, height=96, sample_rate=16000)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass
class Setup:
    cfg: Config
    model: AVClassifier
    checkpoint: Path
    clips: dict[str, Path]  # "av", "no_audio", "no_video", "bad"


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Setup:
    """A randomly initialised tiny model saved as a run, three real clips and one garbage file."""
    root = tmp_path_factory.mktemp("predict")
    # Raw frames at the model's size: these tests compare windows with the decoded file pixel for pixel
    # (JPEG frames larger than the model input, as tiny stores them, have tests of their own below).
    cfg = load_config(ROOT / "configs/tiny.yaml", ["data.video.encoding=raw", "data.video.stored_size=0"])
    torch.manual_seed(0)
    model = AVClassifier(cfg, num_classes=8).eval()
    save_model(storage.locate(root / "run"), model, cfg,
               classes=[{"index": i, "mid": f"/m/{i}", "name": f"class {i}"} for i in range(8)], recipe={})
    clips = {"av": root / "av.mp4", "no_audio": root / "no_audio.mp4", "no_video": root / "no_video.mp4",
             "bad": root / "bad.mp4"}
    write_clip(clips["av"], labels=(0, 4), **CLIP)
    write_clip(clips["no_audio"], labels=(1,), audio=False, **CLIP)
    write_clip(clips["no_video"], labels=(5,), video=False, **CLIP)
    clips["bad"].write_bytes(b"this is not a media file\n" * 40)
    return Setup(cfg, model, root / "run" / "model.pt", clips)


def _job(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


def _blocks(stdout: str) -> dict[str, list[str]]:
    """Text output -> {file: its indented lines}."""
    out: dict[str, list[str]] = {}
    for line in stdout.splitlines():
        if line.startswith("  "):
            out[next(reversed(out))].append(line.strip())
        else:
            out[line.split(" (")[0]] = []
    return out


def test_predict_prints_top_k_notes_missing_streams_and_survives_a_bad_file(setup: Setup) -> None:
    c = setup.clips
    # The bad file sits between good ones: the files after it must still be predicted.
    result = _job("jobs/predict.py", "--checkpoint", str(setup.checkpoint), "--top-k", "3",
                  str(c["av"]), str(c["no_audio"]), str(c["bad"]), str(c["no_video"]))
    assert result.returncode == 1, result.stderr
    errors = result.stderr.strip().splitlines()
    assert len(errors) == 1 and errors[0].startswith(f"error: {c['bad']}:") and "[unreadable]" in errors[0]
    blocks = _blocks(result.stdout)
    assert list(blocks) == [str(c["av"]), str(c["no_audio"]), str(c["no_video"])]
    assert blocks[str(c["no_audio"])][0] == "note: no audio stream: video-only prediction"
    assert blocks[str(c["no_video"])][0] == "note: no video stream: audio-only prediction"
    for lines in blocks.values():
        scored = [ln for ln in lines if not ln.startswith("note:")]
        assert len(scored) == 3
        scores = [float(ln.split()[0]) for ln in scored]
        assert all(0.0 <= s <= 1.0 for s in scores) and scores == sorted(scores, reverse=True)
        assert all(ln.split(maxsplit=1)[1].startswith("class ") for ln in scored)


def test_predict_json_matches_the_library_and_a_missing_checkpoint_exits_2(setup: Setup) -> None:
    crops = 3
    result = _job("jobs/predict.py", "--checkpoint", str(setup.checkpoint), "--json", "--crops", str(crops),
                  str(setup.clips["av"]), str(setup.clips["bad"]))
    assert result.returncode == 1
    good, bad = (json.loads(line) for line in result.stdout.splitlines())
    assert bad == {"file": str(setup.clips["bad"]), "error": "unreadable", "message": bad["message"]}
    mods = setup.model.modalities
    batch = clip_batch(read_clip(setup.clips["av"], setup.cfg.data, mods), mods, crops, 8).to(torch.device("cpu"))
    assert batch.crops == crops and len(batch.content["video"]) == crops
    with torch.no_grad():
        expected = torch.sigmoid(setup.model(batch)).mean(dim=0).numpy()
    assert good["notes"] == [] and len(good["top"]) == 5
    for entry in good["top"]:
        assert entry["score"] == pytest.approx(float(expected[entry["index"]]), abs=1e-5)
        assert entry["mid"] == f"/m/{entry['index']}"

    missing = _job("jobs/predict.py", "--checkpoint", str(setup.checkpoint.parent / "nope" / "model.pt"),
                   str(setup.clips["av"]))
    assert missing.returncode == 2 and missing.stdout == ""
    assert len(missing.stderr.strip().splitlines()) == 1 and "nope/model.pt not found" in missing.stderr


def test_visualize_writes_first_and_last_block_for_both_modalities(setup: Setup, tmp_path: Path) -> None:
    result = _job("jobs/visualize.py", "--checkpoint", str(setup.checkpoint), "--clip", str(setup.clips["av"]),
                  "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    last = setup.cfg.model.num_blocks - 1
    expected = [tmp_path / f"attention_block{b}_{m}.png" for b in (0, last) for m in ("audio", "video")]
    assert sorted(result.stdout.split()) == sorted(str(p) for p in expected)
    for png in expected:
        assert png.read_bytes()[:8] == PNG_SIGNATURE and png.stat().st_size > 10_000


def test_attention_grids_have_the_spec_shapes_and_sum_to_one(setup: Setup) -> None:
    mods = setup.model.modalities
    batch = clip_batch(read_clip(setup.clips["av"], setup.cfg.data, mods), mods, 1, 8)
    specs = setup.model.inputs.specs
    with torch.no_grad():
        _, maps = setup.model(batch, return_attention=True)
    for latent in ("mean", "peaked"):
        for weights in maps:
            pooled = pool_attention(weights[0], latent)
            assert pooled.shape == (sum(s.num_tokens for s in specs),)
            assert float(pooled.sum()) == pytest.approx(1.0, abs=1e-5) and float(pooled.min()) >= 0.0
        grids = attention_grids(setup.model, batch, latent)
        assert len(grids) == setup.cfg.model.num_blocks
        for block in grids:
            assert {name: g.shape for name, g in block.items()} == {"audio": (25,), "video": (4, 4, 4)}
            assert sum(float(g.sum()) for g in block.values()) == pytest.approx(1.0, abs=1e-5)


def test_pool_attention_peaked_keeps_the_lowest_entropy_latent() -> None:
    flat, sharp = torch.full((4,), 0.25), torch.tensor([0.01, 0.97, 0.01, 0.01])
    weights = torch.stack([torch.stack([flat, sharp, flat])] * 2)  # (heads 2, latents 3, tokens 4)
    torch.testing.assert_close(pool_attention(weights, "peaked"), sharp)
    torch.testing.assert_close(pool_attention(weights, "mean"), (2 * flat + sharp) / 3)
    with pytest.raises(ValueError, match="latent"):
        pool_attention(weights, "max")


def test_split_tokens_follows_the_model_order_and_row_major_grids(setup: Setup) -> None:
    specs = AVClassifier(replace(setup.cfg, inputs=replace(setup.cfg.inputs, modalities=["video", "audio"])),
                         num_classes=8).inputs.specs
    grids = split_tokens(torch.arange(64 + 25, dtype=torch.float32), specs)
    np.testing.assert_array_equal(grids["video"], np.arange(64).reshape(4, 4, 4))  # [t, h, w] = 16t + 4h + w
    np.testing.assert_array_equal(grids["audio"], np.arange(64, 89))
    with pytest.raises(ValueError, match="expected"):
        split_tokens(torch.zeros(10), specs)


def test_a_file_gives_the_same_windows_as_its_preprocessed_sample_and_visualize_reads_it(
        setup: Setup, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg, key = setup.cfg, "clip_av"
    mods = setup.model.modalities
    options = EncodeOptions(cfg.data, tuple(mods))
    row = ClipRow(key, "clip", None, None, (0, 4), str(setup.clips["av"]), "test:1")
    encoded = encode_clip(row, options)
    data = storage.locate(tmp_path / "data")
    fourier = shards.fourier_members(modality.tags(mods), modality.position_features(mods))
    shards.write_shard(data, "shards/t-000000.tar", fourier, [encoded.members])
    dataset = {"schema_version": shards.SCHEMA_VERSION, "recipe": recipe_record(cfg.data, mods),
               "classes": [{"index": i, "mid": f"/m/{i}", "name": f"class {i}"} for i in range(8)],
               "counts": {"samples": 1}, "shards": ["shards/t-000000.tar"]}
    storage.write_bytes(data.fs, data.join("dataset.json"), json.dumps(dataset).encode())

    stored = read_stored_sample(open_dataset(data.uri).shards, key)
    from_shard = clip_batch(stored, mods, 2, 8)
    from_file = clip_batch(read_clip(setup.clips["av"], cfg.data, mods), mods, 2, 8)
    for name in ("video", "audio"):
        np.testing.assert_array_equal(from_file.content[name].numpy(), from_shard.content[name].numpy())

    out = tmp_path / "pngs"
    assert visualize.main(["--checkpoint", str(setup.checkpoint), "--data", data.uri, "--key", key,
                           "--out", str(out), "--blocks", "-1", "--latent", "peaked"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["attention_block1_audio.png", "attention_block1_video.png"]
    assert visualize.main(["--checkpoint", str(setup.checkpoint), "--data", data.uri, "--key", "absent",
                           "--out", str(out)]) == 2
    assert "no sample with key 'absent'" in capsys.readouterr().err


def _video(modalities) -> Video:
    return next(m for m in modalities if isinstance(m, Video))


def test_the_video_picture_shows_the_clips_decoded_frames_at_their_times(setup: Setup) -> None:
    cfg, mods = setup.cfg, setup.model.modalities
    sample = read_clip(setup.clips["av"], cfg.data, mods)
    (start,) = window_starts(sample.meta, mods, 1, None)
    window = clip_batch(sample, mods, 1, 8).content["video"][0].numpy()
    frames, times = visualize.video_view(_video(mods), window, start)

    decoded = decode_at_recipe(setup.clips["av"], cfg.data, mods).video
    first, fps = round(start * cfg.data.video.fps), cfg.data.video.fps
    assert first > 0  # the middle window: frame numbers and times must be the clip's, not the window's
    np.testing.assert_array_equal(frames, decoded[first:first + cfg.data.video.num_frames])
    assert times == pytest.approx([(first + i) / fps for i in range(cfg.data.video.num_frames)])
    # Where the map is zero the picture is the decoded frame itself, pixel for pixel.
    attn = np.zeros(_video(mods).spec.grid)
    attn[-1, 0, 0] = 1.0
    panels = [ax for ax in video_attention_figure(attn, frames, times=times).axes if ax.images]
    steps = attn.shape[0]
    for t in range(steps - 1):  # the last step holds the attention
        index = 2 * t + 1  # the middle frame of the patch's 2 frames
        for ax in (panels[t], panels[steps + t]):  # the frame alone, and under its (zero) attention
            np.testing.assert_array_equal(np.asarray(ax.images[0].get_array()), decoded[first + index])
        assert panels[t].get_title() == f"frame {index}, {(first + index) / fps:.2f} s"


def test_the_video_picture_is_the_centre_the_model_sees_of_larger_stored_frames(setup: Setup) -> None:
    cfg = setup.cfg
    data = replace(cfg.data, video=replace(cfg.data.video, stored_size=64))  # stored for training's random crops
    mods = modalities_of(data, cfg.inputs.modalities)
    sample = read_clip(setup.clips["av"], data, mods)
    (start,) = window_starts(sample.meta, mods, 1, None)
    window = clip_batch(sample, mods, 1, 8).content["video"]
    assert window.shape[2:4] == (64, 64)
    frames, _ = visualize.video_view(_video(mods), window[0].numpy(), start)
    assert frames.shape[1:3] == (32, 32)
    seen = _video(mods).prepare(window)[0]  # the model's own evaluation view, in [-1, 1]
    np.testing.assert_allclose(torch.from_numpy(frames).float() / 127.5 - 1.0, seen, atol=1e-6)


def test_visualize_draws_a_run_whose_frames_are_stored_as_jpeg(setup: Setup, tmp_path: Path) -> None:
    cfg = setup.cfg
    jpeg = replace(cfg, data=replace(cfg.data, video=replace(cfg.data.video, encoding="jpeg")))
    save_model(storage.locate(tmp_path / "run"), setup.model, jpeg,
               classes=[{"index": i, "mid": f"/m/{i}", "name": f"class {i}"} for i in range(8)], recipe={})
    # The batch holds the window's JPEGs; the picture needs them decoded, as the model gets them.
    assert visualize.main(["--checkpoint", str(tmp_path / "run" / "model.pt"), "--clip", str(setup.clips["av"]),
                           "--out", str(tmp_path / "pngs"), "--blocks", "0"]) == 0
    assert sorted(p.name for p in (tmp_path / "pngs").iterdir()) == ["attention_block0_audio.png",
                                                                     "attention_block0_video.png"]
