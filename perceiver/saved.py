"""Loading a finished run's model: ``model.pt`` (a plain state dict) and ``model.json`` beside it."""

from __future__ import annotations

import io
import json

import torch

from perceiver.classifier import AVClassifier
from perceiver.config import Config, config_from_dict, to_dict
from pipeline import storage


def save_model(out: storage.Location, model: AVClassifier, cfg: Config, *, classes: list[dict], recipe: dict,
               train_root: str | None = None) -> None:
    """Write ``out/model.pt`` (a plain CPU state dict) and ``out/model.json`` (config, classes, recipe)."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    with storage.atomic_output(out.fs, out.join("model.pt")) as f:
        torch.save(state, f)
    meta = {"config": to_dict(cfg), "model": to_dict(model.config), "classes": list(classes), "recipe": recipe,
            "train": train_root}
    storage.write_bytes(out.fs, out.join("model.json"), json.dumps(meta, indent=2).encode())


def load_model(path: str) -> tuple[AVClassifier, Config, list[dict]]:
    """(model in eval mode on CPU, its config, its classes) from ``RUN/model.pt``."""
    loc = storage.locate(path)
    meta_path = loc.path[: -len(".pt")] + ".json" if loc.path.endswith(".pt") else loc.path + ".json"
    for p in (loc.path, meta_path):
        if not storage.exists(loc.fs, p):
            raise FileNotFoundError(f"{p} not found: pass the model.pt that jobs/train.py wrote (model.json beside it)")
    meta = json.loads(storage.read_bytes(loc.fs, meta_path))
    cfg = config_from_dict(meta["config"])
    model = AVClassifier(cfg, len(meta["classes"]))
    state = torch.load(io.BytesIO(storage.read_bytes(loc.fs, loc.path)), map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model.eval(), cfg, meta["classes"]
