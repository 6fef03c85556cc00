"""Concept pools from captions: the spaCy recipe, the caption sources, the CLI and the embedding cache."""

from __future__ import annotations

import json
import sys
from collections import Counter

import pytest
import torch
import webdataset as wds
from typer.testing import CliRunner

from regionclip import Vocabulary
from regionclip.cli import app
from regionclip.text.concepts import (
    INSTALL_HINT,
    ConceptParserUnavailable,
    build_concept_pool,
    count_concepts,
    filter_concepts,
    load_spacy_pipeline,
    read_captions,
    write_concept_pool,
)
from regionclip.text.embedder import TextEmbedder


@pytest.fixture(scope="module")
def nlp():
    return load_spacy_pipeline()


# Captions with known noun chunks (spaCy en_core_web_sm 3.8) and the concept each chunk names.
KNOWN_CAPTIONS = {
    "A man riding a wave on top of a surfboard.": ["man", "wave", "top", "surfboard"],
    # pronoun roots ("it", twice) are skipped; plurals become lemmas
    "It is a chocolate cake with candles on it.": ["chocolate cake", "candle"],
    # the possessive "her" is not a compound, so only "cell" joins the root
    "She holds her cell phone in the kitchen.": ["cell phone", "kitchen"],
    # two compound children keep their sentence order
    "A tennis ball court with people playing": ["tennis ball court", "people"],
    # captions are lower-cased first
    "A man sitting on a Park Bench next to a fire hydrant.": ["man", "park bench", "fire hydrant"],
    "Two dogs  and a cat on a bed.": ["dog", "cat", "bed"],
}


@pytest.mark.parametrize("caption", list(KNOWN_CAPTIONS))
def test_each_caption_gives_its_known_concepts(nlp, caption):
    counts = count_concepts([caption], nlp=nlp)
    assert list(counts) == KNOWN_CAPTIONS[caption] and set(counts.values()) == {1}


def test_pool_counts_every_chunk_cuts_by_frequency_and_sorts(nlp):
    captions = list(KNOWN_CAPTIONS) + ["A man and a dog in the kitchen.", "A dog on a park bench."]
    assert build_concept_pool(captions, min_count=2, nlp=nlp) == [
        ("man", 3), ("dog", 3), ("kitchen", 2), ("park bench", 2)
    ]
    everything = build_concept_pool(captions, min_count=1, nlp=nlp)
    assert len(everything) == 15 and everything[-1] == ("bed", 1) and sum(c for _, c in everything) == 21


def test_filter_drops_pronouns_symbols_and_names_the_format_cannot_hold():
    counts = Counter({"dog": 5, "it": 9, "$": 3, "my": 4, "a,b": 7, "cat": 5, "'s": 8, "bird": 1, " ": 6})
    assert filter_concepts(counts, min_count=2) == [("dog", 5), ("cat", 5)]
    assert filter_concepts(counts) == [("dog", 5), ("cat", 5), ("bird", 1)]


def test_pool_file_round_trips_through_vocabulary(tmp_path):
    path = write_concept_pool(tmp_path / "pool.txt", [("teddy bear", 12), ("cake", 3)])
    assert path.read_text() == "teddy bear,12\ncake,3\n"
    assert Vocabulary.from_file(path).names == ("teddy bear", "cake")
    with pytest.raises(ValueError, match="empty"):
        write_concept_pool(tmp_path / "empty.txt", [])
    assert not (tmp_path / "empty.txt").exists()


# ---- caption sources ----------------------------------------------------------------------------------------------
def write_sources(folder):
    coco = folder / "captions_train2017.json"
    coco.write_text(json.dumps({
        "images": [{"id": 1}], "annotations": [{"id": 1, "image_id": 1, "caption": "A dog on a bed."},
                                               {"id": 2, "image_id": 1, "caption": "A cat."}],
    }))
    shard = folder / "00000.tar"
    with wds.TarWriter(str(shard)) as writer:  # what img2dataset writes: image, caption text, metadata json
        writer.write({"__key__": "000000000", "jpg": b"\xff\xd8 not decoded", "txt": "A dog and a man.",
                      "json": json.dumps({"caption": "A dog and a man.", "url": "http://x"}).encode()})
        writer.write({"__key__": "000000001", "json": json.dumps({"caption": "A fire hydrant."}).encode()})
        writer.write({"__key__": "000000002", "json": json.dumps({"status": "failed"}).encode()})
    text = folder / "captions.txt"
    text.write_text("A man on a bed.\n\nA dog.\n")
    return coco, shard, text


def test_captions_from_coco_json_webdataset_shards_and_text(tmp_path):
    coco, shard, text = write_sources(tmp_path)
    assert list(read_captions([coco, shard, text])) == [
        "A dog on a bed.", "A cat.", "A dog and a man.", "A fire hydrant.", "A man on a bed.", "A dog."
    ]


def test_bad_caption_sources_fail_before_anything_is_read(tmp_path):
    coco, _, _ = write_sources(tmp_path)
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        read_captions([coco, tmp_path / "missing.txt"])
    instances = tmp_path / "instances.json"
    instances.write_text(json.dumps({"annotations": [{"id": 1, "bbox": [0, 0, 1, 1]}]}))
    with pytest.raises(ValueError, match="not a COCO Captions file"):
        list(read_captions([instances]))
    broken = tmp_path / "broken.tar"
    broken.write_text("not a tar archive")
    with pytest.raises(ValueError, match="broken.tar is not a readable tar shard"):
        list(read_captions([broken]))


def test_cli_writes_a_pool_readable_as_a_vocabulary(tmp_path):
    coco, shard, text = write_sources(tmp_path)
    out = tmp_path / "pool" / "concepts.txt"
    arguments = ["concepts", str(coco), str(shard), str(text), "--min-count", "2", "--out", str(out)]
    result = CliRunner().invoke(app, arguments)
    assert result.exit_code == 0, result.output
    assert out.read_text() == "dog,3\nbed,2\nman,2\n"
    assert Vocabulary.from_file(out).names == ("dog", "bed", "man")
    assert "3 concepts" in result.output


def test_cli_reports_missing_input_and_empty_pool_in_one_line(tmp_path):
    _, _, text = write_sources(tmp_path)
    out = tmp_path / "concepts.txt"
    missing = CliRunner().invoke(app, ["concepts", str(tmp_path / "nope.txt"), "--out", str(out)])
    assert missing.exit_code == 1 and "caption file not found" in missing.output
    empty = CliRunner().invoke(app, ["concepts", str(text), "--min-count", "50", "--out", str(out)])
    assert empty.exit_code == 1 and "concept pool is empty" in empty.output and not out.exists()


def test_without_spacy_the_error_names_the_install_command(tmp_path, monkeypatch):
    with pytest.raises(ConceptParserUnavailable, match="not installed") as error:
        load_spacy_pipeline("en_core_web_no_such_model")
    assert INSTALL_HINT in str(error.value)
    monkeypatch.setitem(sys.modules, "spacy", None)  # makes `import spacy` fail
    with pytest.raises(ConceptParserUnavailable) as error:
        load_spacy_pipeline()
    assert str(error.value) == "parsing concepts needs spaCy: pip install 'regionclip[concepts]'"
    _, _, text = write_sources(tmp_path)
    result = CliRunner().invoke(app, ["concepts", str(text), "--out", str(tmp_path / "c.txt")])
    assert result.exit_code == 1 and "pip install 'regionclip[concepts]'" in result.output


class TokenMeanEncoder(torch.nn.Module):
    """A tiny text encoder (mean of token embeddings over the non-padding tokens), quick enough for 10k prompts."""

    context_length = 77

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.token_embedding = torch.nn.Embedding(49408, width)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        mask = (tokens > 0).unsqueeze(-1).float()
        return (self.token_embedding(tokens) * mask).sum(dim=1) / mask.sum(dim=1)


def test_a_10k_concept_pool_embeds_through_the_vocabulary_cache(tmp_path):
    torch.manual_seed(0)
    encoder = TokenMeanEncoder()
    pool = [(f"thing {i}", 10_000 - i) for i in range(10_000)]
    vocabulary = Vocabulary.from_file(write_concept_pool(tmp_path / "pool.txt", pool))
    assert len(vocabulary) == 10_000
    calls = []
    handle = encoder.register_forward_hook(lambda *args: calls.append(1))
    first = TextEmbedder(encoder, cache_dir=tmp_path / "emb").embed_names(vocabulary, "single")
    first_calls = len(calls)
    second = TextEmbedder(encoder, cache_dir=tmp_path / "emb").embed_names(vocabulary, "single")
    handle.remove()
    assert first.shape == (10_000, 8) and first_calls == 40  # 10k prompts in batches of 256
    assert len(calls) == first_calls  # the second run never calls the text encoder
    torch.testing.assert_close(first, second, atol=0, rtol=0)
    expected_row = encoder(TextEmbedder(encoder).tokenizer(["a photo of a thing 9999."]))[0]
    torch.testing.assert_close(first[-1], expected_row.detach())
