"""Tiny stage-3 checkpoints and phantom scans for the report, prior and calibration tests.

The checkpoint is written the way ``lungvlm fit`` writes one (LightningCLI hyper-parameters with
class paths and the ``_instantiator``, data hyper-parameters, LungVLM metadata), so
``load_model`` rebuilds it through ``LungVLMModule.load_from_checkpoint`` exactly as for a real
run, without spending a training run on it.
"""

from __future__ import annotations

import copy
from pathlib import Path

import lightning
import torch
from lightning.pytorch.cli import instantiate_module

from lungvlm.lightning.module import LungVLMModule

#: A tiny stage-3 model (CPU, seconds).
MODEL_CONFIG = {
    "stage": "vision_language",
    "encoder": {
        "class_path": "lungvlm.models.encoder.MultiScaleEncoder3D",
        "init_args": {"widths": [4, 8, 8, 16, 16], "depths": [1, 1, 1, 1, 1],
                      "fpn_channels": 8, "use_context": True},
    },
    "seg_head": {
        "class_path": "lungvlm.models.heads.segmentation.SegmentationHead",
        "init_args": {"deep_supervision_levels": [0, 1, 2]},
    },
    "vl_heads": {
        "class_path": "lungvlm.models.vision_language.VisionLanguageHeads",
        "init_args": {"vocab_size": 300, "d_model": 32, "n_layers": 1, "n_heads": 2,
                      "max_length": 40, "dropout": 0.0, "embed_dim": 16, "risk_hidden_dim": 16,
                      "mask_pooling": True},
    },
    "vl": {"tokenizer_corpus_size": 40, "generation_max_new_tokens": 38},
}  # fmt: skip
#: Training data of that model: 24-voxel crops at 10 mm, so a tiny phantom chest gives a
#: 30 x 39 x 39 prepared grid (8 sliding windows).
DATA_CONFIG = {"crop_size_vox": 24, "context_scale": 2.0, "spacing_mm": 10.0}


def write_stage3_checkpoint(path: Path, seg_logit: float | None = 4.0, seed: int = 0) -> Path:
    """Build the tiny model, fit its tokenizer and save a ``lungvlm fit``-style checkpoint.

    Args:
        path: checkpoint file to write.
        seg_logit: if given, the segmentation head outputs this constant logit everywhere
            (zero weights), so every lung voxel is "nodule": the lungs become the instances and
            the whole report path runs with an untrained model.
        seed: torch seed of the weights.
    """
    torch.manual_seed(seed)
    config = copy.deepcopy(MODEL_CONFIG)
    module = instantiate_module(LungVLMModule, copy.deepcopy(config))
    module.vl.fit_tokenizer()
    if seg_logit is not None:
        with torch.no_grad():
            for conv in module.seg_head.convs:  # one 1x1x1 Conv3d per output level
                conv.weight.zero_()
                conv.bias.fill_(seg_logit)
    checkpoint = {
        "state_dict": module.state_dict(),
        "pytorch-lightning_version": lightning.__version__,
        "hyper_parameters": {**config, "_instantiator": "lightning.pytorch.cli.instantiate_module"},
        "datamodule_hyper_parameters": dict(DATA_CONFIG),
    }
    module.on_save_checkpoint(checkpoint)
    torch.save(checkpoint, path)
    return path


def write_segment_checkpoint(path: Path) -> Path:
    """A stage-2 ('segment') checkpoint: encoder + segmentation head, no vision-language heads."""
    config = {k: copy.deepcopy(v) for k, v in MODEL_CONFIG.items() if k in ("encoder", "seg_head")}
    config["stage"] = "segment"
    module = instantiate_module(LungVLMModule, copy.deepcopy(config))
    checkpoint = {
        "state_dict": module.state_dict(),
        "pytorch-lightning_version": lightning.__version__,
        "hyper_parameters": {**config, "_instantiator": "lightning.pytorch.cli.instantiate_module"},
    }
    module.on_save_checkpoint(checkpoint)
    torch.save(checkpoint, path)
    return path
