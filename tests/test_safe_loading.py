"""Weight files are read as data: no code from a file runs, TorchScript archives load to the tensors torch.jit.load
gives, non-finite or empty weights are refused with one line, paths with '@' load, damaged caches are rebuilt."""

from __future__ import annotations

import io
import json
import re
import pickle
import sys
import warnings
import zipfile
from typing import Tuple

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from regionclip import ModelConfig, RegionCLIP
from regionclip.checkpoints import load_embedding_file, read_state_dict, save_safetensors
from regionclip.checkpoints.torchscript import STORAGE_DTYPES, read_torchscript_state_dict
from regionclip.checkpoints.detectron2_rpn import read_detectron2_checkpoint, rpn_state_dict_for_detectron2
from regionclip.cli import app
from regionclip.modeling.backbone import build_open_clip
from regionclip.modeling.meta_arch import ProposalNetwork
from regionclip.modeling.proposal_generator import RPNConfig
from regionclip.text.embedder import TextEmbedder

VICTIM_BYTES = b"precious user data"
BOXES = [[0, 0, 64, 64], [10, 5, 50, 60]]
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::torch.jit.TracerWarning")


class FileWriter(torch.nn.Module):
    """A module whose TorchScript ``__setstate__`` overwrites the first bytes of ``target`` when the archive loads."""

    def __init__(self, target: str, count: int) -> None:
        super().__init__()
        self.target, self.count = target, count
        self.weight = torch.nn.Parameter(torch.ones(2))
        self.mapped = torch.zeros(0, dtype=torch.uint8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight

    @torch.jit.export
    def __getstate__(self) -> Tuple[str, int, torch.Tensor, bool]:
        return (self.target, self.count, self.weight, self.training)

    @torch.jit.export
    def __setstate__(self, state: Tuple[str, int, torch.Tensor, bool]) -> None:
        self.target, self.count, self.weight, self.training = state[0], state[1], state[2], state[3]
        # Kept as an attribute so the compiler cannot drop the write as dead code.
        self.mapped = torch.from_file(self.target, True, self.count, dtype=torch.uint8)
        self.mapped.fill_(88)


class HostileCheckpoint(torch.nn.Module):
    def __init__(self, target: str, count: int) -> None:
        super().__init__()
        self.visual = torch.nn.Conv2d(3, 4, 1)
        self.payload = FileWriter(target, count)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.payload(self.visual(x))


@pytest.fixture()
def hostile(tmp_path):
    """(archive path, victim file): loading the archive with torch.jit.load overwrites the victim."""
    victim = tmp_path / "victim.txt"
    victim.write_bytes(VICTIM_BYTES)
    path = tmp_path / "innocent_RN50.pt"
    torch.jit.save(torch.jit.script(HostileCheckpoint(str(victim), 7)), str(path))
    assert victim.read_bytes() == VICTIM_BYTES  # saving runs nothing
    return path, victim


def _assert_one_clear_line(message: str, path) -> None:
    assert "\n" not in message.strip() and str(path) in message
    assert "weights_only=False" not in message and "set to `False`" not in message


def test_hostile_archive_runs_code_under_torch_jit_load(hostile, tmp_path):
    # The control: the archive used below really writes to a file when loaded the way the old code loaded it.
    path, victim = hostile
    torch.jit.load(str(path))
    assert victim.read_bytes() == b"X" * 7 + VICTIM_BYTES[7:]


def test_hostile_archive_runs_nothing_through_any_python_entry_point(hostile, tmp_path, tiny_model):
    path, victim = hostile
    good = tiny_model.save_pretrained(tmp_path / "good")
    entry_points = {
        "from_pretrained": lambda: RegionCLIP.from_pretrained(path),
        "from_pretrained(rpn=)": lambda: RegionCLIP.from_pretrained(good, rpn=path),
        "attach_rpn": lambda: tiny_model.attach_rpn(path),
        "read_detectron2_checkpoint": lambda: read_detectron2_checkpoint(path),
        "load_embedding_file": lambda: load_embedding_file(path),
    }
    for name, load in entry_points.items():
        with pytest.raises(ValueError, match="stores custom state") as error:
            load()
        _assert_one_clear_line(str(error.value), path)
        assert victim.read_bytes() == VICTIM_BYTES, name


def test_hostile_archive_runs_nothing_through_the_cli(hostile, tmp_path, sample_images, make_model):
    path, victim = hostile
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps(BOXES))
    runner = CliRunner()
    result = runner.invoke(app, ["classify", str(sample_images[0]), "--boxes", str(boxes), "--weights", str(path)])
    assert result.exit_code == 1 and victim.read_bytes() == VICTIM_BYTES
    _assert_one_clear_line(result.stderr, path)
    assert result.stderr.startswith("error: ") and "Traceback" not in result.output

    good = make_model(ModelConfig.tiny()).save_pretrained(tmp_path / "good")
    result = runner.invoke(
        app, ["detect", str(sample_images[0]), "--vocab", "cat,dog", "--weights", str(good), "--rpn", str(path)]
    )
    assert result.exit_code == 1 and victim.read_bytes() == VICTIM_BYTES
    _assert_one_clear_line(result.stderr, path)
    assert result.stderr.startswith("error: ") and "Traceback" not in result.output


def _traced_clip(model: RegionCLIP, tmp_path, dtype=torch.float32):
    """An archive of the kind OpenAI released (RN50.pt: a traced CLIP, half-precision weights). Tracing one method
    keeps every module and weight; the text method traces fastest."""
    clip = build_open_clip(model.config)
    clip.load_state_dict(model.openai_state_dict(), strict=False)
    traced = torch.jit.trace_module(clip.eval().to(dtype), {"encode_text": torch.zeros(1, 77, dtype=torch.long)})
    path = tmp_path / "RN_tiny_jit.pt"
    traced.save(str(path))
    return path


def _assert_same_state_dicts(got: dict, reference: dict) -> None:
    assert list(got) == list(reference)
    for key, value in reference.items():
        assert got[key].dtype == value.dtype and got[key].shape == value.shape, key
        assert got[key].stride() == value.stride() and torch.equal(got[key], value), key


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_openai_layout_archive_reads_as_torch_jit_load_does(tiny_model, tmp_path, dtype):
    path = _traced_clip(tiny_model, tmp_path, dtype=dtype)
    tensors, metadata = read_state_dict(path)
    _assert_same_state_dicts(tensors, torch.jit.load(str(path)).state_dict())
    assert metadata == {} and "visual.conv1.weight" in tensors and tensors["visual.conv1.weight"].dtype == dtype


class Assorted(torch.nn.Module):
    """Storage types, shared storages, strides, None and plain-attribute cases of a scripted module."""

    def __init__(self) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        base = torch.randn(12, generator=generator, dtype=torch.float64)
        self.register_buffer("first_half", base[:6])  # two views of one storage, overlapping
        self.register_buffer("middle", base[3:9])
        self.transposed = torch.nn.Parameter(torch.randn(3, 5, generator=generator).t())  # stride (1, 5)
        self.scalar = torch.nn.Parameter(torch.tensor(2.5))
        self.register_buffer("halfs", torch.randn(4, generator=generator).half())
        self.register_buffer("brain", torch.randn(4, generator=generator).bfloat16())
        self.register_buffer("complex", torch.randn(3, generator=generator, dtype=torch.complex64))
        self.register_buffer("complex_double", torch.randn(2, generator=generator, dtype=torch.complex128))
        self.register_buffer("longs", torch.tensor([1, -2, 2**40]))
        self.register_buffer("ints", torch.tensor([7, -7], dtype=torch.int32))
        self.register_buffer("shorts", torch.tensor([300, -300], dtype=torch.int16))
        self.register_buffer("chars", torch.tensor([-5, 5], dtype=torch.int8))
        self.register_buffer("bytes_", torch.tensor([0, 255], dtype=torch.uint8))
        self.register_buffer("flags", torch.tensor([True, False]))
        self.register_buffer("empty", torch.zeros(0, 3))
        self.not_state = torch.ones(3)  # a plain tensor attribute: not in state_dict
        self.blocks = torch.nn.ModuleList([torch.nn.Linear(2, 2, bias=False), torch.nn.Linear(2, 3)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x + self.not_state + self.first_half.sum() + self.middle.sum() + self.scalar


class _Ignored:
    def __init__(self, *args) -> None:
        pass

    def __setstate__(self, state) -> None:
        pass


class _StorageTypes(pickle.Unpickler):
    """Test-side: the element type of every storage key an archive's data.pkl refers to."""

    def __init__(self, data: bytes) -> None:
        super().__init__(io.BytesIO(data))
        self.dtypes: dict[str, torch.dtype] = {}

    def find_class(self, module, name):
        return STORAGE_DTYPES[name] if module == "torch" and name in STORAGE_DTYPES else _Ignored

    def persistent_load(self, saved_id):
        self.dtypes[saved_id[2]] = saved_id[1]


def _as_big_endian(path, out_path) -> None:
    """The same archive as a big-endian machine writes it: every storage byte-swapped, byteorder 'big'."""
    with zipfile.ZipFile(path) as archive, zipfile.ZipFile(out_path, "w") as out:
        prefix = next(n for n in archive.namelist() if n.endswith("/data.pkl"))[: -len("data.pkl")]
        reader = _StorageTypes(archive.read(prefix + "data.pkl"))
        reader.load()
        for info in archive.infolist():
            data = archive.read(info)
            dtype = reader.dtypes.get(info.filename[len(prefix + "data/") :])
            if info.filename.startswith(prefix + "data/") and dtype is not None and data:
                word = torch.empty(0, dtype=dtype).element_size() // (2 if dtype.is_complex else 1)
                data = bytes(torch.frombuffer(bytearray(data), dtype=torch.uint8).view(-1, word).flip(1).reshape(-1))
            elif info.filename == prefix + "byteorder":
                data = b"big"
            out.writestr(info, data)


def test_scripted_archive_dtypes_sharing_strides_and_byte_order(tmp_path):
    path = tmp_path / "assorted.pt"
    torch.jit.save(torch.jit.script(Assorted()), str(path))
    reference = torch.jit.load(str(path)).state_dict()
    assert "not_state" not in reference and "blocks.0.bias" not in reference  # what jit.load reports
    got = read_torchscript_state_dict(path)
    _assert_same_state_dicts(got, reference)
    assert got["first_half"].untyped_storage().data_ptr() == got["middle"].untyped_storage().data_ptr()
    assert sys.byteorder == "little"
    swapped = tmp_path / "assorted_big_endian.pt"
    _as_big_endian(path, swapped)
    _assert_same_state_dicts(read_torchscript_state_dict(swapped), reference)


class _OpensFile:
    def __init__(self, path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_crafted_archive_pickle_calls_nothing(tmp_path):
    """A zip laid out like a TorchScript archive whose data.pkl calls ``open(path, "w")`` when unpickled normally."""
    marker = tmp_path / "created_by_the_pickle"
    payload = pickle.dumps({"weight": _OpensFile(marker)}, protocol=2)
    pickle.loads(payload)
    assert marker.exists()  # the control: an ordinary unpickler runs the call
    marker.unlink()
    path = tmp_path / "crafted.pt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("crafted/data.pkl", payload)
        archive.writestr("crafted/constants.pkl", pickle.dumps(()))
        archive.writestr("crafted/code/__torch__.py", "")
    with pytest.raises(ValueError, match="does not hold a TorchScript module") as error:
        RegionCLIP.from_pretrained(path)
    _assert_one_clear_line(str(error.value), path)
    assert not marker.exists()


def test_archive_with_a_short_storage_record_is_refused(tmp_path):
    path, short = tmp_path / "assorted.pt", tmp_path / "short.pt"
    torch.jit.save(torch.jit.script(Assorted()), str(path))
    with zipfile.ZipFile(path) as archive, zipfile.ZipFile(short, "w") as out:
        for info in archive.infolist():
            data = archive.read(info)
            out.writestr(info, data[:-8] if info.filename == "assorted/data/0" else data)
    with pytest.raises(ValueError, match=r"storage record assorted/data/0 has \d+ bytes, \d+ expected") as error:
        read_torchscript_state_dict(short)
    _assert_one_clear_line(str(error.value), short)


# ---- NaN / Inf weights ---------------------------------------------------------------------------------------


def _inf_in_one_conv(state: dict, key: str) -> dict:
    state = {k: v.clone() for k, v in state.items()}
    state[key].view(-1)[3] = float("inf")
    return state


def _openai_pt(model, tmp_path):
    torch.save(_inf_in_one_conv(model.openai_state_dict(), "visual.layer1.0.conv2.weight"), tmp_path / "w.pt")
    return lambda: RegionCLIP.from_pretrained(tmp_path / "w.pt"), "visual.layer1.0.conv2.weight"


def _regionclip_pth(model, tmp_path):
    state = {f"backbone.{k[len('visual.'):]}": v for k, v in model.openai_state_dict().items() if k.startswith("visual.")}
    torch.save({"model": _inf_in_one_conv(state, "backbone.layer2.0.conv1.weight")}, tmp_path / "w.pth")
    return lambda: RegionCLIP.from_pretrained(tmp_path / "w.pth"), "backbone.layer2.0.conv1.weight"


def _safetensors(model, tmp_path):
    state = _inf_in_one_conv(model.openai_state_dict(), "visual.conv2.weight")
    save_safetensors(tmp_path / "w.safetensors", state, model.config)
    return lambda: RegionCLIP.from_pretrained(tmp_path / "w.safetensors"), "visual.conv2.weight"


def _torchscript(model, tmp_path):
    with torch.no_grad():
        model.trunk.conv3.weight.view(-1)[0] = float("inf")
    path = _traced_clip(model, tmp_path)
    return lambda: RegionCLIP.from_pretrained(path), "visual.conv3.weight"


def _rpn(model, tmp_path):
    state = rpn_state_dict_for_detectron2(ProposalNetwork(RPNConfig.tiny("fpn")))
    key = "proposal_generator.rpn_head.conv.weight"
    torch.save({"model": _inf_in_one_conv(state, key)}, tmp_path / "rpn.pth")
    return lambda: model.attach_rpn(tmp_path / "rpn.pth"), key


def _embeddings(model, tmp_path):
    embeddings = torch.randn(3, 32)
    embeddings[1, 4] = float("nan")
    torch.save(embeddings, tmp_path / "emb.pth")
    return lambda: load_embedding_file(tmp_path / "emb.pth"), "embeddings"


@pytest.mark.parametrize("make_file", [_openai_pt, _regionclip_pth, _safetensors, _torchscript, _rpn, _embeddings])
def test_non_finite_weights_are_refused_by_name(tmp_path, make_file, make_model):
    model = make_model(ModelConfig.tiny())
    load, tensor_name = make_file(model, tmp_path)
    with pytest.raises(ValueError, match=f"tensor '{tensor_name}' holds 1 NaN/Inf value") as error:
        load()
    assert "\n" not in str(error.value)


# ---- empty files, '@' in paths, damaged caches -------------------------------------------------------------


def test_empty_weight_files_say_so(tmp_path, sample_images, tiny_model):
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    for load in (RegionCLIP.from_pretrained, tiny_model.attach_rpn, load_embedding_file):
        with pytest.raises(ValueError, match=r"is empty \(0 bytes\)"):
            load(empty)
    for content in ({}, {"model": {}}):
        torch.save(content, tmp_path / "nothing.pth")
        with pytest.raises(ValueError, match=r"holds no tensors \(an empty state dict\)"):
            RegionCLIP.from_pretrained(tmp_path / "nothing.pth")
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps(BOXES))
    result = CliRunner().invoke(app, ["classify", str(sample_images[0]), "--boxes", str(boxes), "--weights", str(empty)])
    assert result.exit_code == 1 and "Aborted" not in result.output
    assert result.stderr == f"error: {empty} is empty (0 bytes): no weights to load (regionclip --debug ... shows the traceback)\n"


def test_weight_paths_containing_at_signs_load(tmp_path, sample_images, make_model):
    model = make_model(ModelConfig.tiny())
    file_weights = model.save_pretrained(tmp_path / "run@3.safetensors")
    dir_weights = model.save_pretrained(tmp_path / "teacher@step=800").parent
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps(BOXES))
    runner = CliRunner()
    base = ["classify", str(sample_images[0]), "--boxes", str(boxes), "--vocab", "cat,dog", "--templates", "single"]
    reference = None
    for spec in (str(file_weights), f"{dir_weights}@student"):
        result = runner.invoke(app, [*base, "--weights", spec])
        assert result.exit_code == 0, result.output
        reference = reference or result.stdout
        assert result.stdout == reference
    result = runner.invoke(app, [*base, "--weights", f"{file_weights}@boss"])
    assert result.exit_code == 2
    message = " ".join(re.sub("[│╭╮╰╯─]", " ", result.stderr).split())  # typer frames usage errors in a box
    assert "'boss' is not a branch (use @student or @teacher)" in message


@pytest.mark.parametrize("damage", ["garbage", "truncated", "nan"])
def test_damaged_text_embedding_cache_is_named_and_rebuilt(tiny_model, tmp_path, damage):
    names = ["cat", "dog", "kite"]
    embedder = TextEmbedder(tiny_model.text_encoder, cache_dir=tmp_path / "emb")
    expected = embedder.embed_names(names, "single")
    (cache_file,) = (tmp_path / "emb").glob("*.safetensors")
    if damage == "garbage":
        cache_file.write_bytes(b"\x00not safetensors")
    elif damage == "truncated":
        cache_file.write_bytes(cache_file.read_bytes()[:-40])
    else:
        save_file({"embeddings": torch.full((3, expected.shape[1]), float("nan"))}, str(cache_file))
    fresh = TextEmbedder(tiny_model.text_encoder, cache_dir=tmp_path / "emb")
    with pytest.warns(UserWarning, match=f"text-embedding cache {cache_file} is unreadable .*; rebuilding it"):
        rebuilt = fresh.embed_names(names, "single")
    torch.testing.assert_close(rebuilt, expected, atol=0, rtol=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the rewritten cache file reads cleanly
        torch.testing.assert_close(fresh.embed_names(names, "single"), expected, atol=0, rtol=0)
