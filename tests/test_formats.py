"""Every GPT-2 checkpoint our users hold: OpenAI's TensorFlow folder, the LLMs-from-scratch .pth,
nanoGPT's ckpt.pt, each written by its own code (see tests/formats_writers.py).

Compiled graphs: the TF fixture and the .pth made from it share one config (SMALL); nanoGPT's
exact GELU needs its own (NANO), and the ckpt.pt files nanoGPT's own code wrote (300 tokens,
unpadded) one more; the real 124M shape is the one test_parity compiles. Greedy
tokens are taken from the logits graph (a full recompute per token), which needs no new graph.
"""

import functools
import json
import pickle
import shutil
import warnings

import numpy as np
import pytest

from max_gpt2 import GPT2
from max_gpt2.errors import AssumedConfigWarning, CheckpointError
from max_gpt2.reference import reference_logits
from max_gpt2.weights import resolve
from tests.formats_writers import (FIXTURES, NANO, OPENAI_TF, SMALL, book_config, book_model_from_openai, nanogpt_reference,
                                   openai_reference, write_nanogpt)

IDS = np.array([[3, 77, 150, 299, 12, 8, 200, 41, 5, 90], [250, 1, 60, 60, 9, 100, 298, 7, 33, 2],
                [17, 17, 220, 140, 81, 0, 5, 44, 199, 120]])  # batch 3, within every vocabulary here


def torch_logits(model, ids) -> np.ndarray:
    import torch

    with torch.no_grad():
        out = model(torch.as_tensor(np.asarray(ids), dtype=torch.long))
    return (out.logits if hasattr(out, "logits") else out).float().numpy()


def greedy(next_logits, prompt, n) -> list[int]:
    ids = list(prompt)
    for _ in range(n):
        ids.append(int(np.argmax(next_logits(np.array([ids]))[0, -1])))
    return ids[len(prompt):]


def assert_same_model(model, reference, ids=IDS, greedy_tokens=12):
    np.testing.assert_allclose(model.logits(ids), torch_logits(reference, ids), atol=1e-4, rtol=0)
    prompt = [int(t) for t in ids[0, :4]]
    assert greedy(model.logits, prompt, greedy_tokens) == greedy(lambda x: torch_logits(reference, x), prompt, greedy_tokens)


# --- OpenAI's TensorFlow release --------------------------------------------------------------


@pytest.fixture(scope="module")
def openai_model():
    return GPT2.from_pretrained(OPENAI_TF)


def test_openai_tf_folder_equals_transformers_on_the_same_weights(openai_model):
    assert openai_model.config == SMALL and openai_model.config.head_dim == 12  # from hparams.json, not 64
    assert_same_model(openai_model, openai_reference())


def test_openai_tf_greedy_text_equals_transformers(openai_model):
    reference, tok = openai_reference(), openai_model.tokenizer
    prompt = tok.encode("the best of the")
    ours = greedy(openai_model.logits, prompt, 10)
    assert tok.decode(ours) == tok.decode(greedy(lambda x: torch_logits(reference, x), prompt, 10))


def test_openai_tf_is_found_by_its_folder_index_or_prefix():
    by_folder = resolve(OPENAI_TF)
    for other in (OPENAI_TF / "model.ckpt.index", OPENAI_TF / "model.ckpt", OPENAI_TF / "hparams.json"):
        found = resolve(other)
        assert found.format == "openai_tf" and found.config == by_folder.config
        assert all(np.array_equal(found.tensors[k], by_folder.tensors[k]) for k in by_folder.tensors)


def test_openai_tf_tokenizer_is_encoder_json_and_vocab_bpe(openai_model):
    tok = openai_model.tokenizer
    assert tok.decode(tok.encode("the cat sat")) == "the cat sat" and tok.eos_token_id == 299


def _tf_copy(tmp_path):
    folder = tmp_path / "openai"
    shutil.copytree(OPENAI_TF, folder)
    return folder


def test_a_flipped_byte_in_the_tf_data_file_is_refused_by_its_checksum(tmp_path):
    folder = _tf_copy(tmp_path)
    data = folder / "model.ckpt.data-00000-of-00001"
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    data.write_bytes(raw)
    with pytest.raises(CheckpointError, match=r"model/h\d/.* fails its crc32c checksum: the file is damaged"):
        GPT2.from_pretrained(folder)


def test_a_truncated_tf_data_file_is_named(tmp_path):
    folder = _tf_copy(tmp_path)
    data = folder / "model.ckpt.data-00000-of-00001"
    data.write_bytes(data.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="data-00000-of-00001 is truncated: .* download it again"):
        GPT2.from_pretrained(folder)


def test_a_tf_folder_without_its_checkpoint_says_which_files_are_missing(tmp_path):
    shutil.copy(OPENAI_TF / "hparams.json", tmp_path / "hparams.json")
    with pytest.raises(CheckpointError, match="no TensorFlow checkpoint in .*hparams.json is there but model.ckpt.index"):
        GPT2.from_pretrained(tmp_path)


# --- LLMs-from-scratch .pth -------------------------------------------------------------------


def _needs_the_book():
    # llms-from-scratch requires TensorFlow on Linux, so the Makefile installs it with --no-deps.
    pytest.importorskip("llms_from_scratch", reason="pip install --no-deps llms-from-scratch")


@pytest.fixture(scope="module")
def book(tmp_path_factory):
    import torch

    _needs_the_book()
    model = book_model_from_openai()
    path = tmp_path_factory.mktemp("book") / "gpt2-small.pth"
    torch.save(model.state_dict(), path)
    return path, model


def test_book_pth_with_its_config_equals_the_books_own_forward(book):
    path, model = book
    ours = GPT2.from_pretrained(path, config=SMALL)  # heads 12 wide: the 64 guess must be overridden
    assert_same_model(ours, model)


def test_book_pth_without_config_warns_of_the_assumed_head_count(book):
    with pytest.warns(AssumedConfigWarning, match="assumed n_head=1"):
        found = resolve(book[0])
    assert found.format == "llms_from_scratch" and found.config.tie_word_embeddings  # out_head == tok_emb


def test_book_pth_at_124m_loads_with_heads_from_the_64_wide_guess(tmp_path):
    """The book's gpt2-small-124M.pth: no config needed, its 12 heads follow from 768 / 64."""
    import torch

    from max_gpt2.config import GPT2Config

    _needs_the_book()
    from llms_from_scratch.ch04 import GPTModel

    torch.manual_seed(0)
    model = GPTModel(book_config(GPT2Config())).eval()
    with torch.no_grad():  # GPT-2's own init scale: nn.Embedding's N(0, 1) makes logits of hundreds
        model.tok_emb.weight.normal_(0, 0.02)
        model.pos_emb.weight.normal_(0, 0.02)
        model.out_head.weight.copy_(model.tok_emb.weight)  # as load_weights_into_gpt leaves it: tied
    torch.save(model.state_dict(), tmp_path / "gpt2-small-124M.pth")
    with pytest.warns(AssumedConfigWarning):
        ours = GPT2.from_pretrained(tmp_path / "gpt2-small-124M.pth")
    assert ours.config == GPT2Config() and ours.num_parameters == 124_439_808
    np.testing.assert_allclose(ours.logits(IDS[:2, :7]), torch_logits(model, IDS[:2, :7]), atol=1e-4, rtol=0)


def _edited_book(book, tmp_path, edit):
    import torch

    state = dict(book[1].state_dict())
    edit(state)
    torch.save(state, tmp_path / "edited.pth")
    return tmp_path / "edited.pth"


def test_a_pth_without_a_w_key_is_refused_naming_it(book, tmp_path):
    path = _edited_book(book, tmp_path, lambda s: s.pop("trf_blocks.1.att.W_key.weight"))
    with pytest.raises(CheckpointError, match=r"missing trf_blocks\.1\.att\.W_key\.weight"):
        GPT2.from_pretrained(path, config=SMALL)


def test_a_pth_of_a_classifier_is_refused(book, tmp_path):
    import torch

    path = _edited_book(book, tmp_path, lambda s: s.update({"out_head.weight": torch.zeros(2, 48)}))
    with pytest.raises(CheckpointError, match="out_head.weight has 2 rows but tok_emb.weight has 300: this is a classifier"):
        GPT2.from_pretrained(path)


# --- nanoGPT ckpt.pt --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def nano(tmp_path_factory):
    folder = tmp_path_factory.mktemp("nanogpt")
    return {(bias, compiled): (folder / f"ckpt-{bias}-{compiled}.pt", write_nanogpt(folder / f"ckpt-{bias}-{compiled}.pt", bias=bias, compiled=compiled, seed=int(bias)))
            for bias, compiled in ((True, False), (False, True))}


@pytest.mark.parametrize("bias, compiled", [(True, False), (False, True)], ids=["bias", "no-bias-torch-compiled"])
def test_nanogpt_ckpt_equals_transformers_on_the_same_weights(nano, bias, compiled):
    path, state = nano[bias, compiled]
    model = GPT2.from_pretrained(path)
    assert model.config == NANO  # exact GELU, vocabulary 50304 padded back to GPT-2's 50257
    assert_same_model(model, nanogpt_reference(state))


def test_nanogpt_padded_vocabulary_rows_are_dropped(nano):
    """No logit exists for the 47 padding rows, so no sampler can pick a token the tokenizer lacks."""
    path, state = nano[True, False]
    model = GPT2.from_pretrained(path)
    assert model.state["transformer.wte.weight"].shape == (50257, 48)
    np.testing.assert_array_equal(model.state["transformer.wte.weight"], state["transformer.wte.weight"][:50257].numpy())


def test_a_nanogpt_ckpt_whose_pickle_would_run_code_does_not_run(tmp_path):
    import torch

    from tests.test_weights import Exploit

    marker = tmp_path / "pwned"
    torch.save({"model": {"transformer.wte.weight": torch.zeros(2, 2)}, "model_args": {}, "config": Exploit(marker)},
               tmp_path / "ckpt.pt")
    with pytest.raises(CheckpointError, match="refused to load .*could run code"):
        GPT2.from_pretrained(tmp_path / "ckpt.pt")
    assert not marker.exists()


def test_an_unknown_state_dict_names_the_formats_we_read(tmp_path):
    import torch

    torch.save({"encoder.layer.0.weight": torch.zeros(2, 2)}, tmp_path / "model.pth")
    with pytest.raises(CheckpointError, match="is not a GPT-2 checkpoint max-gpt2 reads .*it reads: Hugging Face .*nanoGPT"):
        GPT2.from_pretrained(tmp_path / "model.pth")


# --- nanoGPT ckpt.pt written by nanoGPT's own code (tests/fixtures/make_nanogpt.py) -------------

NANOGPT_FIXTURES = ["bias", "no_bias", "compiled"]  # one model configuration: one compiled graph


def _nanogpt_fixture(variant):
    folder = FIXTURES / "nanogpt" / variant
    return folder / "ckpt.pt", dict(np.load(folder / "expected.npz"))


def greedy_batch(next_logits, prompts, n) -> np.ndarray:
    ids = np.asarray(prompts)
    for _ in range(n):
        ids = np.concatenate([ids, next_logits(ids)[:, -1].argmax(-1)[:, None]], axis=1)
    return ids[:, prompts.shape[1]:]


@pytest.fixture(scope="module")
def nanogpt_model():
    """Loads each fixture once, on first use, so a variant that fails to load fails only its tests."""
    return functools.cache(lambda variant: GPT2.from_pretrained(_nanogpt_fixture(variant)[0]))


@pytest.mark.parametrize("variant", NANOGPT_FIXTURES)
def test_nanogpt_own_ckpt_logits_equal_nanogpts_forward(nanogpt_model, variant):
    _, expected = _nanogpt_fixture(variant)
    model = nanogpt_model(variant)
    assert model.config.vocab_size == 300 and model.config.activation_function == "gelu"
    assert expected["ids"].shape[0] > 1
    np.testing.assert_allclose(model.logits(expected["ids"]), expected["logits"], atol=1e-4, rtol=0)


@pytest.mark.parametrize("variant", NANOGPT_FIXTURES)
def test_nanogpt_own_ckpt_greedy_equals_nanogpts_generate(nanogpt_model, variant):
    _, expected = _nanogpt_fixture(variant)
    ours = greedy_batch(nanogpt_model(variant).logits, expected["prompt"], expected["greedy"].shape[1])
    np.testing.assert_array_equal(ours, expected["greedy"])


def test_nanogpt_fixtures_are_the_three_kinds_train_py_saves():
    import torch

    saved = {v: torch.load(_nanogpt_fixture(v)[0], map_location="cpu", weights_only=True) for v in NANOGPT_FIXTURES}
    assert {v: (c["model_args"]["bias"], c["config"]["compile"]) for v, c in saved.items()} == {
        "bias": (True, False), "no_bias": (False, False), "compiled": (True, True)}
    assert all(k.startswith("_orig_mod.") for k in saved["compiled"]["model"])
    assert not any(k.endswith(".bias") for k in saved["no_bias"]["model"])


# --- convert: a Hugging Face folder transformers loads with the same logits ------------------


def _converted(source, tmp_path, *extra):
    from transformers import GPT2LMHeadModel

    from tests.test_cli import run

    out = tmp_path / "converted"
    result = run("convert", str(source), str(out), *extra)
    assert result.returncode == 0, result.stderr
    return GPT2LMHeadModel.from_pretrained(out, local_files_only=True).eval(), out


def test_convert_openai_tf_round_trip(tmp_path):
    theirs, out = _converted(OPENAI_TF, tmp_path)
    np.testing.assert_allclose(torch_logits(theirs, IDS), torch_logits(openai_reference(), IDS), atol=1e-5, rtol=0)
    assert {"vocab.json", "merges.txt", "config.json", "model.safetensors"} <= {p.name for p in out.iterdir()}


def test_convert_book_pth_round_trip(book, tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(SMALL.to_dict()))
    theirs, _ = _converted(book[0], tmp_path, "--config", str(tmp_path / "config.json"))
    np.testing.assert_allclose(torch_logits(theirs, IDS), torch_logits(book[1], IDS), atol=1e-5, rtol=0)


def test_convert_nanogpt_round_trip(nano, tmp_path):
    path, state = nano[False, True]
    theirs, _ = _converted(path, tmp_path)
    np.testing.assert_allclose(torch_logits(theirs, IDS), torch_logits(nanogpt_reference(state), IDS), atol=1e-5, rtol=0)


def test_convert_hub_layout_round_trip(hub, tmp_path):
    theirs, _ = _converted(hub.path, tmp_path)
    np.testing.assert_allclose(torch_logits(theirs, IDS), reference_logits(hub.reference, IDS), atol=1e-5, rtol=0)


def test_convert_refuses_a_non_empty_folder_without_force(tmp_path):
    from tests.test_cli import assert_one_clear_error, run

    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    assert_one_clear_error(run("convert", str(OPENAI_TF), str(tmp_path / "out")), "not an empty folder", "--force")
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"
    assert run("convert", str(OPENAI_TF), str(tmp_path / "out"), "--force").returncode == 0
    assert not (tmp_path / "out" / "keep.txt").exists() and (tmp_path / "out" / "model.safetensors").exists()


def test_a_failed_convert_leaves_no_folder(tmp_path, monkeypatch):
    import safetensors.numpy

    from max_gpt2.convert import convert

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(safetensors.numpy, "save_file", full_disk)
    with pytest.raises(OSError):
        convert(OPENAI_TF, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


# --- inspect ----------------------------------------------------------------------------------


def test_inspect_shows_transpose_skip_and_tie_rows_without_colour_when_piped(hub):
    from tests.test_cli import run

    result = run("inspect", str(hub.path))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "\x1b[" not in result.stdout
    assert any("h.0.attn.c_attn.weight" in line and "[96, 288]" in line and "[288, 96]" in line and "transposed" in line for line in lines)
    assert any("h.0.attn.bias" in line and "skipped: a buffer" in line for line in lines)
    assert any("lm_head.weight" in line and "tied to wte" in line for line in lines)
    assert "format huggingface" in result.stdout


def test_inspect_json_names_each_config_value_source(book):
    from tests.test_cli import run

    result = run("inspect", str(book[0]), "--json")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    origin = {c["field"]: c["from"] for c in info["config"]}
    assert info["format"] == "llms_from_scratch" and origin["n_head"].startswith("assumed")
    fused = [r for r in info["tensors"] if r["ours"] == "transformer.h.0.attn.c_attn.weight"]
    assert [r["stored"] for r in fused] == [f"trf_blocks.0.att.{w}.weight" for w in ("W_query", "W_key", "W_value")]
    assert "assumed n_head=1" in result.stderr  # the warning, as one progress line


@pytest.mark.parametrize("make, fragment", [
    (lambda d: shutil.copy(OPENAI_TF / "hparams.json", d / "hparams.json") and d, "no TensorFlow checkpoint"),
    (lambda d: (shutil.copytree(OPENAI_TF, d / "tf"), (d / "tf" / "model.ckpt.data-00000-of-00001").write_bytes(b"\0" * 100), d / "tf")[2],
     "is truncated"),
])
def test_bad_tf_input_is_one_clear_line(tmp_path, make, fragment):
    from tests.test_cli import assert_one_clear_error, run

    assert_one_clear_error(run("inspect", str(make(tmp_path))), fragment)


def test_bad_pth_input_is_one_clear_line(book, tmp_path):
    import torch

    from tests.test_cli import assert_one_clear_error, run

    classifier = _edited_book(book, tmp_path, lambda s: s.update({"out_head.weight": torch.zeros(2, 48)}))
    assert_one_clear_error(run("inspect", str(classifier)), "a classifier")
    torch.save({"encoder.weight": torch.zeros(2)}, tmp_path / "unknown.pth")
    assert_one_clear_error(run("inspect", str(tmp_path / "unknown.pth")), "it reads: Hugging Face")


def test_verify_passes_on_a_tf_folder():
    from tests.test_cli import run

    result = run("verify", "--model", str(OPENAI_TF))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK: MAX and transformers agree" in result.stdout
