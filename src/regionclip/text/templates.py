"""Prompt templates: the official 81-template ensemble and the single-template mode."""

from __future__ import annotations

from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

SINGLE_TEMPLATE = "a photo of a {}."


def _ensemble() -> tuple[str, ...]:
    # '{}.' followed by OpenAI's 80 ImageNet templates, 'a photo of a {}.' second as in the official list.
    openai = [template("{}") for template in OPENAI_IMAGENET_TEMPLATES]
    openai.remove(SINGLE_TEMPLATE)
    return ("{}.", SINGLE_TEMPLATE, *openai)


ENSEMBLE_TEMPLATES: tuple[str, ...] = _ensemble()


def resolve_templates(templates: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """``"ensemble"`` (81 templates), ``"single"`` ('a photo of a {}.') or an explicit list with ``{}`` slots."""
    if isinstance(templates, str):
        if templates == "ensemble":
            return ENSEMBLE_TEMPLATES
        if templates == "single":
            return (SINGLE_TEMPLATE,)
        if "{}" in templates:
            return (templates,)
        raise ValueError(f"templates must be 'ensemble', 'single' or contain '{{}}', got {templates!r}")
    resolved = tuple(templates)
    if not resolved or any("{}" not in t for t in resolved):
        raise ValueError("every template needs a '{}' slot for the class name")
    return resolved


def prompt_name(name: str) -> str:
    """The class name as put into a prompt: LVIS-style ``_`` → space and parentheses removed; ``,`` removed and
    ``+`` → space (the official ``prompt_engineering``)."""
    cleaned = name.replace("_", " ").replace("(", "").replace(")", "").replace(",", "").replace("+", " ")
    return " ".join(cleaned.split())
