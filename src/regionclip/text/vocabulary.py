"""A vocabulary of category names: built from lists, files, comma strings or dataset presets."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Iterator, Sequence

from .templates import prompt_name

_DATA = "regionclip.text.data"

PRESET_ALIASES: dict[str, str] = {
    "coco": "coco80",
    "coco80": "coco80",
    "coco48": "coco48",
    "coco_base": "coco48",
    "coco17": "coco17",
    "coco_novel": "coco17",
    "coco65": "coco65",
    "coco_ovd": "coco65",
    "lvis": "lvis1203",
    "lvis1203": "lvis1203",
    "lvis866": "lvis866",
    "lvis_base": "lvis866",
    "lvis337": "lvis337",
    "lvis_rare": "lvis337",
}


def _read_tsv(filename: str) -> list[dict[str, str]]:
    text = resources.files(_DATA).joinpath(filename).read_text(encoding="utf-8")
    return list(csv.DictReader(text.splitlines(), delimiter="\t"))


@dataclass(frozen=True)
class Vocabulary:
    """Category names with their dataset ids (for COCO/LVIS results) and optional LVIS frequency / OV split.

    ``names`` are kept as given (e.g. LVIS's ``bow_(weapon)``); ``prompt_names`` are cleaned as the official code
    does before they go into the prompt templates. Names must be non-empty strings and distinct after that cleaning,
    ignoring case (``cat`` and ``Cat`` would get identical text embeddings): duplicates are an error, not merged.
    """

    names: tuple[str, ...]
    category_ids: tuple[int, ...]
    frequency: tuple[str, ...] | None = None
    split: tuple[str, ...] | None = None
    source: str = "custom"

    def __post_init__(self) -> None:
        if not self.names:
            raise ValueError("a vocabulary needs at least one name")
        first_by_prompt: dict[str, str] = {}
        for position, name in enumerate(self.names, start=1):
            if not isinstance(name, str) or not prompt_name(name):
                raise ValueError(f"vocabulary names must be non-empty strings; name {position} is {name!r}")
            # CLIP's tokenizer lower-cases, so names equal up to case and prompt cleaning get identical embeddings
            # and would split one class's probability between two labels.
            key = prompt_name(name).lower()
            if key in first_by_prompt:
                first = first_by_prompt[key]
                same = f"{name!r} appears twice" if first == name else f"{first!r} and {name!r} give the same prompt"
                raise ValueError(f"duplicate vocabulary name: {same}; each class needs a distinct name")
            first_by_prompt[key] = name
        if len(self.category_ids) != len(self.names):
            raise ValueError("category_ids must have one id per name")
        if len(set(self.category_ids)) != len(self.category_ids):
            raise ValueError("category_ids must be unique")
        for field_name in ("frequency", "split"):
            values = getattr(self, field_name)
            if values is not None and len(values) != len(self.names):
                raise ValueError(f"{field_name} must have one entry per name")

    # ---- construction ----------------------------------------------------------------------------
    @classmethod
    def from_names(cls, names: Sequence[str], category_ids: Sequence[int] | None = None, source: str = "custom") -> Vocabulary:
        names = tuple(n.strip() if isinstance(n, str) else n for n in names)  # non-strings are refused below
        ids = tuple(int(i) for i in category_ids) if category_ids is not None else tuple(range(1, len(names) + 1))
        return cls(names=names, category_ids=ids, source=source)

    @classmethod
    def from_string(cls, text: str) -> Vocabulary:
        """``"cat, dog, traffic light"`` → three names."""
        names = [part.strip() for part in text.split(",") if part.strip()]
        if not names:
            raise ValueError(f"no names in vocabulary string {text!r}")
        return cls.from_names(names, source="string")

    @classmethod
    def from_file(cls, path: str | Path) -> Vocabulary:
        """One name per line (official concept files ``name,count`` keep the part before the first comma);
        a COCO/LVIS instances json uses its ``categories``."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"vocabulary file not found: {path}")
        if path.suffix == ".json":
            return cls.from_coco_categories(json.loads(path.read_text())["categories"], source=str(path))
        names = [line.split(",")[0].strip() for line in path.read_text(encoding="utf-8").splitlines()]
        names = [n for n in names if n]
        if not names:
            raise ValueError(f"{path} holds no names")
        return cls.from_names(names, source=str(path))

    @classmethod
    def from_coco_categories(cls, categories: list[dict], source: str = "coco-json") -> Vocabulary:
        """From the ``categories`` of a COCO/LVIS instances file (keeps ids, LVIS ``frequency`` and a ``split``)."""
        categories = sorted(categories, key=lambda c: c["id"])
        frequency = tuple(c["frequency"] for c in categories) if all("frequency" in c for c in categories) else None
        split = tuple(c["split"] for c in categories) if all("split" in c for c in categories) else None
        return cls(
            names=tuple(c["name"] for c in categories),
            category_ids=tuple(int(c["id"]) for c in categories),
            frequency=frequency,
            split=split,
            source=source,
        )

    @classmethod
    def preset(cls, name: str) -> Vocabulary:
        """``coco80``, ``coco48`` / ``coco17`` / ``coco65`` (OV-COCO base / novel / all), ``lvis1203``, ``lvis866``
        (base: frequent + common), ``lvis337`` (rare); aliases such as ``coco``, ``lvis``, ``coco_novel``."""
        key = PRESET_ALIASES.get(name.lower())
        if key is None:
            raise ValueError(f"unknown vocabulary preset {name!r}; choose one of {sorted(PRESET_ALIASES)}")
        if key == "coco80":
            rows = _read_tsv("coco80.tsv")
            return cls(tuple(r["name"] for r in rows), tuple(int(r["id"]) for r in rows), source=key)
        if key.startswith("coco"):
            rows = _read_tsv("coco_ovd.tsv")
            wanted = {"coco48": {"base"}, "coco17": {"novel"}, "coco65": {"base", "novel"}}[key]
            rows = [r for r in rows if r["split"] in wanted]
            return cls(
                tuple(r["name"] for r in rows),
                tuple(int(r["id"]) for r in rows),
                split=tuple(r["split"] for r in rows),
                source=key,
            )
        rows = _read_tsv("lvis_v1.tsv")
        wanted = {"lvis1203": {"f", "c", "r"}, "lvis866": {"f", "c"}, "lvis337": {"r"}}[key]
        rows = [r for r in rows if r["frequency"] in wanted]
        return cls(
            tuple(r["name"] for r in rows),
            tuple(int(r["id"]) for r in rows),
            frequency=tuple(r["frequency"] for r in rows),
            source=key,
        )

    @classmethod
    def parse(cls, spec: str | Sequence[str] | Vocabulary) -> Vocabulary:
        """What a user passes to ``--vocab``: a preset name, a file path, or a comma-separated string;
        from Python also a list of names or a Vocabulary."""
        if isinstance(spec, Vocabulary):
            return spec
        if not isinstance(spec, str):
            return cls.from_names(list(spec))
        if spec.lower() in PRESET_ALIASES:
            return cls.preset(spec)
        if Path(spec).is_file():
            return cls.from_file(spec)
        if spec.endswith((".txt", ".json", ".tsv", ".csv")):
            raise FileNotFoundError(f"vocabulary file not found: {spec}")
        return cls.from_string(spec)

    # ---- access ----------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.names)

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    @property
    def prompt_names(self) -> tuple[str, ...]:
        return tuple(prompt_name(n) for n in self.names)

    def subset(self, indices: Sequence[int], source: str | None = None) -> Vocabulary:
        pick = list(indices)
        return Vocabulary(
            names=tuple(self.names[i] for i in pick),
            category_ids=tuple(self.category_ids[i] for i in pick),
            frequency=tuple(self.frequency[i] for i in pick) if self.frequency else None,
            split=tuple(self.split[i] for i in pick) if self.split else None,
            source=source or f"{self.source}[subset]",
        )
