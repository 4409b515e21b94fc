"""Loading a finished run's model: ``model.pt`` (a plain state dict) and ``model.json`` beside it."""

from __future__ import annotations

import io
import json

import torch

from perceiver.classifier import AVClassifier
from perceiver.config import Config
from perceiver.training import config_from_dict
from pipeline import storage


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
