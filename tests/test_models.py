"""The one model loader: safetensors round trip, refusals and error messages, embedded-part checks."""

import types
from pathlib import Path

import pytest
import torch

from semalign import embedded
from semalign.errors import SemalignError
from semalign.models import (
    check_gguf,
    decoder_layers,
    empty_hf_model,
    final_norm,
    load_hf_dir,
    load_source,
    model_info,
    parsed_once,
    save_hf_dir,
)
from semalign.sources import ModelSource, source_sha256
from semalign.testing import tiny_model, tiny_tokenizer


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_save_then_load_gives_identical_logits(tmp_path, arch):
    model, tokenizer = tiny_model(arch, seed=3), tiny_tokenizer()
    save_hf_dir(model, tokenizer, tmp_path / "m")
    assert list((tmp_path / "m").glob("*.safetensors"))
    loaded, loaded_tok = load_hf_dir(tmp_path / "m")
    ids = torch.tensor([tokenizer("def add(a, b):").input_ids])
    torch.testing.assert_close(loaded(ids).logits, model(ids).logits, rtol=0, atol=0)
    assert loaded_tok("def add(a, b):").input_ids == tokenizer("def add(a, b):").input_ids
    assert loaded.dtype == torch.float32


def test_model_info_reads_depth_width_vocab():
    info = model_info(tiny_model("qwen2", hidden_size=32, num_layers=3, vocab_size=320))
    assert (info.num_layers, info.d_model, info.vocab_size, info.tied_head) == (3, 32, 320, False)
    assert model_info(tiny_model("llama", tie_word_embeddings=True)).tied_head


def test_missing_directory_names_the_fix(tmp_path):
    for load in (load_hf_dir, empty_hf_model):
        with pytest.raises(SemalignError, match="dvc repro materialize"):
            load(tmp_path / "nowhere")


def test_empty_model_has_the_architecture_and_no_weights(tmp_path):
    model = tiny_model("qwen2", seed=3, num_layers=3, hidden_size=32)
    save_hf_dir(model, tiny_tokenizer(), tmp_path / "m")
    empty = empty_hf_model(tmp_path / "m")
    assert all(p.is_meta for p in empty.parameters())
    assert {n: p.shape for n, p in empty.named_parameters()} == {
        n: p.shape for n, p in model.named_parameters()
    }


def test_pickle_weights_are_refused_unless_allowed(tmp_path):
    model = tiny_model("llama")
    model.config.save_pretrained(tmp_path)
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    tiny_tokenizer().save_pretrained(tmp_path)
    assert not list(tmp_path.glob("*.safetensors")), "the fixture must hold pickle weights only"
    with pytest.raises(SemalignError, match="allow_pickle"):
        load_hf_dir(tmp_path)
    loaded, _ = load_hf_dir(tmp_path, allow_pickle=True)
    ids = torch.tensor([[5, 6, 7]])
    torch.testing.assert_close(loaded(ids).logits, model(ids).logits)


def test_gguf_with_wrong_checksum_is_rejected_before_loading(tmp_path):
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"GGUF not really")
    with pytest.raises(SemalignError, match="sha256 .* expected 00+"):
        load_source(ModelSource(source="gguf", path=str(fake), sha256="0" * 64))


def _gguf(path, tensors: dict[str, tuple[int, int]]) -> bytes:
    """A small GGUF file at `path` holding float32 ones of the given shapes; its bytes."""
    import gguf

    writer = gguf.GGUFWriter(str(path), "llama")
    for name, shape in tensors.items():
        writer.add_tensor(name, torch.ones(shape).numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path.read_bytes()


@pytest.mark.parametrize("keep", [0.5, 0.9, 0.001])
def test_truncated_gguf_names_the_file_and_the_fix(tmp_path, keep):
    whole = _gguf(tmp_path / "whole.gguf", {"a": (64, 64), "b": (128, 64)})
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(whole[: int(len(whole) * keep)])
    with pytest.raises(SemalignError, match=f"GGUF file {cut} is truncated or damaged .*re-download it") as e:
        load_source(ModelSource(source="gguf", path=str(cut)))
    assert "\n" not in str(e.value)


def test_a_gguf_is_parsed_once_per_load(tmp_path, monkeypatch):
    import gguf

    path = tmp_path / "m.gguf"
    _gguf(path, {"a": (4, 4)})
    other = tmp_path / "other.gguf"
    _gguf(other, {"b": (2, 2)})
    parses = []
    real = gguf.GGUFReader
    monkeypatch.setattr(
        gguf, "GGUFReader", lambda file, *a, **k: parses.append(Path(file)) or real(file, *a, **k)
    )
    with parsed_once(path):
        first = gguf.GGUFReader(path)
        assert gguf.GGUFReader(str(path)) is first  # transformers passes a str
        assert [t.name for t in gguf.GGUFReader(other).tensors] == ["b"]  # another file: its own parse
        check_gguf(path)
    assert parses == [path, other]
    assert gguf.GGUFReader(path) is not first  # outside the block: a fresh parse
    assert len(parses) == 3


def test_source_hash_changes_when_a_model_is_replaced_in_place(tmp_path):
    save_hf_dir(tiny_model("qwen2", seed=1), tiny_tokenizer(), tmp_path / "m")
    source = ModelSource(source="hf_dir", path=str(tmp_path / "m"))
    first = source_sha256(source)
    assert source_sha256(source) == first
    save_hf_dir(tiny_model("qwen2", seed=2), tiny_tokenizer(), tmp_path / "m")  # same path, new weights
    assert source_sha256(source) != first
    (tmp_path / "m" / "extra.txt").write_text("x")  # any file of the directory counts
    assert len({first, source_sha256(source)}) == 2
    gguf_file = tmp_path / "m.gguf"
    _gguf(gguf_file, {"a": (4, 4)})
    import hashlib

    assert (
        source_sha256(ModelSource(source="gguf", path=str(gguf_file)))
        == hashlib.sha256(gguf_file.read_bytes()).hexdigest()
    )
    embedded_source = ModelSource(source="embedded", name="qwen2.5-coder-0.5b-instruct")
    assert source_sha256(embedded_source) == embedded.EMBEDDED_MODELS["qwen2.5-coder-0.5b-instruct"].sha256
    with pytest.raises(SemalignError, match="not a model directory"):
        source_sha256(ModelSource(source="hf_dir", path=str(tmp_path / "none")))


def test_source_validation_messages():
    with pytest.raises(SemalignError, match="unknown"):
        ModelSource(source="hub", name="x")
    with pytest.raises(SemalignError, match="needs `path`"):
        ModelSource(source="gguf")
    with pytest.raises(SemalignError, match="choose one of"):
        load_source(ModelSource(source="embedded", name="llama-70b"))


def test_embedded_parts_assemble_and_verify(tmp_path, monkeypatch):
    parts = [tmp_path / f"p{i}.bin" for i in range(3)]
    for i, p in enumerate(parts):
        p.write_bytes(bytes([i]) * 1000)
    for i, p in enumerate(parts, start=1):
        monkeypatch.setitem(
            __import__("sys").modules, f"fakepart{i}", types.SimpleNamespace(get_part_path=lambda p=p: str(p))
        )
    whole = b"".join(p.read_bytes() for p in parts)
    import hashlib

    good = embedded.EmbeddedModel(
        "fake", "fakepart", "fake-part{i}==1", 3, len(whole), hashlib.sha256(whole).hexdigest()
    )
    out = embedded.assemble_gguf(good, tmp_path / "out" / "fake.gguf")
    assert out.read_bytes() == whole

    bad = embedded.EmbeddedModel("fake", "fakepart", "fake-part{i}==1", 3, len(whole), "f" * 64)
    with pytest.raises(SemalignError, match="sha256"):
        embedded.assemble_gguf(bad, tmp_path / "bad" / "fake.gguf")
    assert not list((tmp_path / "bad").iterdir()), "a file that fails its checksum must not be left behind"

    missing = embedded.EmbeddedModel("fake", "nosuchpart", "no-such-part{i}==1", 2, 0, "0" * 64)
    with pytest.raises(SemalignError, match=r"no-such-part1==1.*pip install"):
        embedded.part_paths(missing)


def test_layer_and_norm_accessors():
    model = tiny_model("qwen2", num_layers=3)
    assert len(decoder_layers(model)) == 3
    assert final_norm(model).weight.shape == (48,)
    with pytest.raises(SemalignError, match="Llama/Qwen2"):
        decoder_layers(torch.nn.Linear(2, 2))
