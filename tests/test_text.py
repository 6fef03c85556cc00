"""Vocabularies, prompt templates and class embeddings (ensemble mean, cache, official .pth files)."""

from __future__ import annotations

import pytest
import torch

from regionclip import Vocabulary
from regionclip.checkpoints import load_embedding_file, save_embedding_file
from regionclip.text.embedder import TextEmbedder
from regionclip.text.templates import ENSEMBLE_TEMPLATES, SINGLE_TEMPLATE, prompt_name, resolve_templates


def test_ensemble_has_the_official_81_templates():
    assert len(ENSEMBLE_TEMPLATES) == 81 and len(set(ENSEMBLE_TEMPLATES)) == 81
    assert ENSEMBLE_TEMPLATES[:2] == ("{}.", "a photo of a {}.")
    assert "itap of a {}." in ENSEMBLE_TEMPLATES and "a photo of the large {}." in ENSEMBLE_TEMPLATES
    assert resolve_templates("single") == (SINGLE_TEMPLATE,)
    with pytest.raises(ValueError):
        resolve_templates(["no slot"])


def test_names_are_cleaned_as_the_official_code_does():
    assert prompt_name("bow_(weapon)") == "bow weapon"
    assert prompt_name("salt+pepper, shaker") == "salt pepper shaker"
    assert Vocabulary.preset("lvis").prompt_names[0] == "aerosol can"


def test_vocabulary_sources(tmp_path):
    assert Vocabulary.from_string("cat, dog,traffic light").names == ("cat", "dog", "traffic light")
    concept_file = tmp_path / "concepts.txt"
    concept_file.write_text("teddy bear,1520\nchocolate cake,330\n\n")
    from_file = Vocabulary.from_file(concept_file)
    assert from_file.names == ("teddy bear", "chocolate cake") and from_file.category_ids == (1, 2)
    assert Vocabulary.parse(str(concept_file)).names == from_file.names
    assert Vocabulary.parse(["a", "b"]).names == ("a", "b")
    assert Vocabulary.parse("coco").source == "coco80"
    with pytest.raises(FileNotFoundError):
        Vocabulary.parse("missing.txt")
    with pytest.raises(ValueError):
        Vocabulary.from_string(" , ")
    with pytest.raises(ValueError):
        Vocabulary.preset("imagenet")


def test_presets_sizes_ids_and_groups():
    coco = Vocabulary.preset("coco80")
    assert len(coco) == 80 and coco.category_ids[0] == 1 and coco.category_ids[-1] == 90
    base, novel, ovd = Vocabulary.preset("coco48"), Vocabulary.preset("coco17"), Vocabulary.preset("coco65")
    assert (len(base), len(novel), len(ovd)) == (48, 17, 65)
    assert set(base.names) | set(novel.names) == set(ovd.names) and set(ovd.names) <= set(coco.names)
    assert list(ovd.category_ids) == sorted(ovd.category_ids)  # official contiguous order = COCO id order
    assert "umbrella" in novel.names and "person" in base.names
    lvis = Vocabulary.preset("lvis")
    assert len(lvis) == 1203 and lvis.category_ids == tuple(range(1, 1204))
    assert {g: lvis.frequency.count(g) for g in "frc"} == {"f": 405, "r": 337, "c": 461}
    assert len(Vocabulary.preset("lvis_base")) == 866 and len(Vocabulary.preset("lvis_rare")) == 337


def test_coco_json_categories_keep_ids_frequency_and_split(tmp_path):
    cats = [{"id": 7, "name": "b", "frequency": "r", "split": "novel"}, {"id": 3, "name": "a", "frequency": "f", "split": "base"}]
    path = tmp_path / "instances.json"
    path.write_text(__import__("json").dumps({"categories": cats, "images": [], "annotations": []}))
    vocab = Vocabulary.from_file(path)
    assert vocab.names == ("a", "b") and vocab.category_ids == (3, 7)
    assert vocab.frequency == ("f", "r") and vocab.split == ("base", "novel")


def test_ensemble_embedding_is_the_mean_of_unnormalised_template_features(tiny_model):
    embedder = TextEmbedder(tiny_model.text_encoder, cache_dir=None)
    names = ["teddy bear", "bow_(weapon)"]
    embeddings = embedder.embed_names(names, "ensemble", use_cache=False)
    assert embeddings.shape == (2, tiny_model.config.embed_dim)
    for row, name in zip(embeddings, ["teddy bear", "bow weapon"]):
        per_template = torch.stack([embedder.encode_texts([t.format(name)])[0] for t in ENSEMBLE_TEMPLATES])
        torch.testing.assert_close(row, per_template.mean(dim=0), atol=1e-5, rtol=1e-5)
    single = embedder.embed_names(names, "single", use_cache=False)
    torch.testing.assert_close(single[0], embedder.encode_texts(["a photo of a teddy bear."])[0])


def test_text_encoder_matches_open_clip_encode_text(tiny_model):
    from regionclip.modeling.backbone import build_open_clip

    clip = build_open_clip(tiny_model.config)
    clip.load_state_dict(tiny_model.openai_state_dict(), strict=False)
    embedder = TextEmbedder(tiny_model.text_encoder, cache_dir=None)
    tokens = embedder.tokenizer(["a photo of a person.", "itap of a cat."])
    # docs/official-semantics.md, "Tokenizer and prompts"
    assert tokens[0, :8].tolist() == [49406, 320, 1125, 539, 320, 2533, 269, 49407]
    with torch.no_grad():
        torch.testing.assert_close(tiny_model.text_encoder(tokens), clip.encode_text(tokens))


def test_cache_skips_the_text_encoder_on_a_second_run(tiny_model, tmp_path):
    embedder = TextEmbedder(tiny_model.text_encoder, cache_dir=tmp_path / "emb")
    calls = []
    handle = tiny_model.text_encoder.register_forward_hook(lambda *args: calls.append(1))
    first = embedder.embed_names(["cat", "dog", "kite"])
    n_first = len(calls)
    second = TextEmbedder(tiny_model.text_encoder, cache_dir=tmp_path / "emb").embed_names(["cat", "dog", "kite"])
    handle.remove()
    assert n_first > 0 and len(calls) == n_first
    torch.testing.assert_close(first, second, atol=0, rtol=0)
    # other templates, other names or other weights are other cache entries
    assert embedder.cache_path(["cat"], ("{}.",)) != embedder.cache_path(["cat"], ("a {}.",))
    before = embedder.cache_path(["cat"], ("{}.",))
    with torch.no_grad():
        tiny_model.text_encoder.text_projection.add_(1.0)
    assert embedder.cache_path(["cat"], ("{}.",)) != before


def test_official_embedding_file_round_trip(tmp_path):
    embeddings = torch.randn(5, 32)
    path = save_embedding_file(tmp_path / "cls_emb.pth", embeddings)
    assert torch.equal(torch.load(path, weights_only=True), embeddings)  # a bare [N, D] tensor, as shipped
    assert torch.equal(load_embedding_file(path), embeddings)
    torch.save(torch.randn(32), tmp_path / "single.pth")  # squeeze() of one concept gives [D]
    assert load_embedding_file(tmp_path / "single.pth").shape == (1, 32)
    torch.save({"not": "a tensor"}, tmp_path / "bad.pth")
    with pytest.raises(ValueError):
        load_embedding_file(tmp_path / "bad.pth")


def test_model_vocabulary_embedding_uses_cache(tiny_model):
    vocab = Vocabulary.from_names(["circle", "square"])
    a = tiny_model.embed_vocabulary(vocab, "single")
    b = tiny_model.embed_vocabulary(vocab, "single")
    assert a.shape == (2, 32) and torch.equal(a, b)
