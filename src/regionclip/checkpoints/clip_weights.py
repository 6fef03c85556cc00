"""Reading and writing the weight files of CLIP-based region models.

Formats read (docs/official-semantics.md, "Weight files"):
- OpenAI CLIP (``visual.*`` + text keys; TorchScript archives such as ``RN50.pt``, read as data by
  `regionclip.checkpoints.torchscript`, or plain state dicts) and
  open_clip checkpoints (``{"state_dict": ...}``, optional ``module.`` prefix);
- official RegionCLIP / detectron2 ``.pth`` files ``{"model": state_dict}`` with ``backbone.*`` (student),
  ``teacher_backbone.*`` (teacher), ``lang_encoder.*`` (text), ``roi_heads.box_predictor.*`` (classifier) and the
  offline RPN (``offline_backbone.*``, ``offline_proposal_generator.*``);
- this project's safetensors files: OpenAI key names plus the model config in the metadata (no pickle).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..config import InputConfig, ModelConfig, TextConfig, VisionConfig
from ..utils import atomic_write
from .io import load_pickled_weights, require_finite

TEXT_PREFIXES = ("token_embedding.", "positional_embedding", "transformer.", "ln_final.", "text_projection")
# Keys of OpenAI/open_clip files that carry no weights we use (the zero-shot classifier has its own temperature;
# TorchScript archives also hold the causal mask, which is rebuilt from the context length).
IGNORED_CLIP_KEYS = ("logit_scale", "logit_bias", "input_resolution", "context_length", "vocab_size", "attn_mask")
RPN_PREFIXES = ("offline_backbone.", "offline_proposal_generator.")
METADATA_FORMAT = "regionclip"
# Where OpenAI CLIP keys live in a region model: the visual tower's res5 and attention pool form the per-region
# ``head``, the rest of it the per-image ``trunk``; the text keys (no prefix in OpenAI files) the ``text_encoder``.
REGION_HEAD_KEYS = ("layer4.", "attnpool.")
OPENAI_PREFIX_OF_MODULE = {"trunk": "visual.", "head": "visual.", "text_encoder": ""}


@dataclass
class CheckpointParts:
    """A checkpoint split by role; each dict uses OpenAI CLIP names without the ``visual.`` prefix for ``visual``."""

    kind: str  # "openai", "regionclip" or "safetensors"
    visual: dict[str, torch.Tensor]
    text: dict[str, torch.Tensor] | None
    classifier: dict[str, torch.Tensor] = field(default_factory=dict)
    rpn: dict[str, torch.Tensor] = field(default_factory=dict)
    other: list[str] = field(default_factory=list)  # keys of parts this model does not use (teacher, ...)
    config: ModelConfig | None = None  # from safetensors metadata, when present
    metadata: dict[str, str] = field(default_factory=dict)


def model_state_dict(parts: CheckpointParts) -> dict[str, torch.Tensor]:
    """The visual and text tensors of ``parts`` under the region model's module names (``trunk.*``, ``head.*``,
    ``text_encoder.*``); inverse of `openai_state_dict`."""
    state = {f"{'head' if k.startswith(REGION_HEAD_KEYS) else 'trunk'}.{k}": v for k, v in parts.visual.items()}
    state.update({f"text_encoder.{k}": v for k, v in (parts.text or {}).items()})
    return state


def openai_state_dict(model_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A region model's trunk, head and text-encoder tensors under OpenAI CLIP names (``visual.*`` and the text
    keys), in the model's order; other modules (the RPN, ...) are left out."""
    state = {}
    for key, value in model_state.items():
        module, _, rest = key.partition(".")
        if module in OPENAI_PREFIX_OF_MODULE:
            state[OPENAI_PREFIX_OF_MODULE[module] + rest] = value
    return state


def read_state_dict(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a weight file, read as data only (safetensors, pickles with ``weights_only=True``,
    TorchScript archives without running their code); empty files and NaN/Inf weights are refused."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        if path.stat().st_size == 0:
            raise ValueError(f"{path} is empty (0 bytes): no weights to load")
        try:
            with safe_open(str(path), framework="pt", device="cpu") as handle:
                tensors, metadata = {k: handle.get_tensor(k) for k in handle.keys()}, dict(handle.metadata() or {})
        except SafetensorError as error:
            raise ValueError(f"{path} is not a readable safetensors file ({error})") from None
    else:
        obj, metadata = load_pickled_weights(path), {}
        for wrapper in ("model", "state_dict"):
            if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
                obj = obj[wrapper]
                break
        if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
            raise ValueError(f"{path}: not a state dict of tensors")
        tensors = obj
    if not tensors:
        raise ValueError(f"{path} holds no tensors (an empty state dict)")
    if all(k.startswith("module.") for k in tensors):
        tensors = {k[len("module.") :]: v for k, v in tensors.items()}
    require_finite(tensors, path)
    return tensors, metadata


def split_checkpoint(state_dict: dict[str, torch.Tensor], branch: str = "student") -> CheckpointParts:
    """Assign every key of a CLIP / RegionCLIP state dict to the part that uses it."""
    if branch not in ("student", "teacher"):
        raise ValueError(f"branch must be 'student' or 'teacher', got {branch!r}")
    if any(k.startswith(("backbone.", "teacher_backbone.", "lang_encoder.")) for k in state_dict):
        return _split_regionclip(state_dict, branch)
    if any(k.startswith("visual.") for k in state_dict):
        if branch == "teacher":
            raise ValueError("a plain CLIP checkpoint has no separate teacher; use branch='student'")
        visual = {k[len("visual.") :]: v for k, v in state_dict.items() if k.startswith("visual.")}
        text = {k: v for k, v in state_dict.items() if k.startswith(TEXT_PREFIXES)}
        rpn = {k: v for k, v in state_dict.items() if k.startswith(RPN_PREFIXES)}  # bundled in our safetensors
        other = [k for k in state_dict if not k.startswith(("visual.", *TEXT_PREFIXES, *RPN_PREFIXES))]
        unknown = [k for k in other if k not in IGNORED_CLIP_KEYS]
        if unknown:
            raise ValueError(f"unexpected keys in a CLIP checkpoint: {unknown[:5]}")
        return CheckpointParts("openai", visual, text or None, rpn=rpn, other=other)
    raise ValueError("unrecognised checkpoint: expected OpenAI CLIP keys (visual.*) or RegionCLIP keys (backbone.*)")


def _split_regionclip(state_dict: dict[str, torch.Tensor], branch: str) -> CheckpointParts:
    visual_prefix = "backbone." if branch == "student" else "teacher_backbone."
    text_prefix = "lang_encoder." if branch == "student" else "teacher_lang_encoder."
    visual, text, classifier, rpn, other = {}, {}, {}, {}, []
    for key, value in state_dict.items():
        if key.startswith(visual_prefix):
            visual[key[len(visual_prefix) :]] = value
        elif key.startswith(text_prefix):
            text[key[len(text_prefix) :]] = value
        elif key.startswith("roi_heads.box_predictor."):
            classifier[key[len("roi_heads.box_predictor.") :]] = value
        elif key.startswith(RPN_PREFIXES):
            rpn[key] = value
        else:
            other.append(key)
    if branch == "teacher" and not text and any(k.startswith("lang_encoder.") for k in state_dict):
        # The teacher shares the frozen text encoder with the student in released checkpoints.
        text = {k[len("lang_encoder.") :]: v for k, v in state_dict.items() if k.startswith("lang_encoder.")}
        other = [k for k in other if not k.startswith("lang_encoder.")]
    if not visual:
        raise ValueError(f"checkpoint has no {visual_prefix}* weights (branch={branch!r})")
    return CheckpointParts("regionclip", visual, text or None, classifier, rpn, other)


def infer_config(visual: dict[str, torch.Tensor], text: dict[str, torch.Tensor] | None, name: str = "custom") -> ModelConfig:
    """Model shape from the tensors (as open_clip does for OpenAI state dicts), for the visual tower alone too."""
    try:
        layers = tuple(
            len({k.split(".")[1] for k in visual if k.startswith(f"layer{stage}.")}) for stage in (1, 2, 3, 4)
        )
        width = visual["layer1.0.conv1.weight"].shape[0]
        grid_tokens = visual["attnpool.positional_embedding"].shape[0]
        embed_dim = visual["attnpool.c_proj.weight"].shape[0]
    except KeyError as missing:
        raise ValueError(f"not a CLIP ModifiedResNet: missing {missing}") from None
    grid = round((grid_tokens - 1) ** 0.5)
    if grid * grid + 1 != grid_tokens:
        raise ValueError(f"attention-pool positional embedding has {grid_tokens} rows, not a square grid + 1")
    # OpenAI RN models use 64-d attention heads; the tiny presets use 32 (stored in our own metadata instead).
    vision = VisionConfig(layers=layers, width=width, image_size=grid * 32)  # type: ignore[arg-type]
    text_cfg = None
    if text:
        text_width = text["ln_final.weight"].shape[0]
        text_cfg = TextConfig(
            context_length=text["positional_embedding"].shape[0],
            vocab_size=text["token_embedding.weight"].shape[0],
            width=text_width,
            heads=max(1, text_width // 64),
            layers=len({k.split(".")[2] for k in text if k.startswith("transformer.resblocks.")}),
        )
    for preset in (ModelConfig.rn50(), ModelConfig.rn50x4()):
        if preset.vision == vision and preset.embed_dim == embed_dim:
            name = preset.name
    return ModelConfig(name=name, embed_dim=embed_dim, vision=vision, text=text_cfg, input=InputConfig())


def load_checkpoint(path: str | Path, branch: str = "student") -> CheckpointParts:
    """Read any supported weight file and split it into parts, with the model config (stored or inferred)."""
    state_dict, metadata = read_state_dict(path)
    parts = split_checkpoint(state_dict, branch)
    parts.metadata = metadata
    if metadata.get("format") == METADATA_FORMAT:
        parts.kind = "safetensors"
        parts.config = ModelConfig.from_json(metadata["config"])
    else:
        parts.config = infer_config(parts.visual, parts.text)
    return parts


def save_safetensors(
    path: str | Path, state_dict: dict[str, torch.Tensor], config: ModelConfig, extra_metadata: dict[str, str] | None = None
) -> Path:
    """Write OpenAI-named weights and the config to a safetensors file, atomically."""
    metadata = {"format": METADATA_FORMAT, "config": config.to_json(), **(extra_metadata or {})}
    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def load_openai_clip(name: str) -> CheckpointParts:
    """OpenAI CLIP weights through open_clip (downloads unless cached)."""
    import open_clip

    try:
        clip = open_clip.create_model(name, pretrained="openai")
    except Exception as error:  # network / hub failures surface with many exception types
        raise RuntimeError(
            f"could not load OpenAI {name} through open_clip ({error}). Offline? Put the OpenAI file "
            f"(e.g. {name}.pt) on disk and pass its path."
        ) from error
    parts = split_checkpoint(clip.state_dict())
    parts.config = infer_config(parts.visual, parts.text)
    return parts
