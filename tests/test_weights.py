"""The loader, without compiling: names, orientation, buffers, tying, and every way to fail."""

import json
import os
import shutil
import subprocess
import sys
import warnings

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from max_gpt2 import GPT2
from max_gpt2.checkpoints.mapping import conv1d_weights
from max_gpt2.config import GPT2Config
from max_gpt2.engine import expected_shapes
from max_gpt2.errors import AssumedConfigWarning
from max_gpt2.weights import CheckpointError, adapt, infer_config, resolve


def hf_state(made):
    return {k: v.detach().numpy() for k, v in made.reference.state_dict().items()}


def test_adapt_transposes_exactly_the_conv1d_weights(hub):
    raw = load_file(str(hub.path / "model.safetensors"))
    state = adapt(raw, hub.config)
    transposed = {k for k in state if not np.array_equal(state[k], raw[k.removeprefix("transformer.")])}
    assert transposed == {
        f"transformer.h.{i}.{name}.weight"
        for i in range(hub.config.n_layer)
        for name in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")  # stated here, not imported
    }
    for name in transposed:
        np.testing.assert_array_equal(state[name], raw[name.removeprefix("transformer.")].T)


def test_hub_layout_buffers_skipped_and_head_tied(hub):
    raw = load_file(str(hub.path / "model.safetensors"))
    assert "h.0.attn.bias" in raw and "lm_head.weight" not in raw  # what the Hub's gpt2 file holds
    state = adapt(raw, hub.config)
    assert not any(k.endswith((".attn.bias", ".attn.masked_bias")) for k in state)
    assert "transformer.h.0.attn.c_attn.bias" in state  # a real weight, not the buffer
    assert set(state) == set(expected_shapes(hub.config))


@pytest.mark.parametrize("fixture", ["hub", "pretrained", "pickled", "untied"])
def test_every_layout_fills_every_parameter_with_the_reference_values(fixture, request):
    made = request.getfixturevalue(fixture)
    model = GPT2.from_pretrained(made.path)
    ref = hf_state(made)
    assert set(model.state) == set(expected_shapes(made.config))
    for name, value in model.state.items():
        want = ref[name]
        if name.endswith(conv1d_weights()):
            want = want.T
        np.testing.assert_array_equal(value, want, err_msg=name)
    assert model.num_parameters == made.reference.num_parameters()


def test_in_memory_state_dict_with_transformers_config(hub):
    model = GPT2.from_pretrained(hub.reference.state_dict(), config=hub.reference.config)
    assert model.config == hub.config and model.num_parameters == hub.reference.num_parameters()


def test_a_state_dict_is_copied_at_load_so_later_edits_to_the_torch_model_do_not_leak(hub):
    """Graphs compile on first use, from the loaded arrays: they must not be views of the torch model."""
    import copy

    import torch

    from max_gpt2.reference import reference_logits

    torch_model = copy.deepcopy(hub.reference)
    model = GPT2.from_pretrained(torch_model.state_dict(), config=torch_model.config)
    ids = [[15496, 995, 11, 314], [464, 3290, 318, 257]]
    at_load = reference_logits(torch_model, ids)
    with torch.no_grad():
        for p in torch_model.parameters():
            p.mul_(0.5)
    np.testing.assert_allclose(model.logits(ids), at_load, atol=1e-4)


def test_state_dict_needs_a_config(hub):
    with pytest.raises(CheckpointError, match="needs config="):
        GPT2.from_pretrained(hub.reference.state_dict())


def test_a_single_safetensors_file_with_config_beside_it(hub):
    model = GPT2.from_pretrained(hub.path / "model.safetensors")
    assert model.config == hub.config and model.tokenizer is not None


def test_a_bare_safetensors_file_infers_its_config(hub, tmp_path):
    shutil.copy(hub.path / "model.safetensors", tmp_path / "weights.safetensors")
    with pytest.warns(AssumedConfigWarning):
        found = resolve(tmp_path / "weights.safetensors")
    assert found.config.n_layer == 3 and found.config.n_embd == 96 and found.config.n_inner == 200
    with pytest.raises(CheckpointError):  # and a guess is never silently trusted for a shape
        GPT2.from_pretrained(tmp_path / "weights.safetensors", config={"n_layer": 2, "n_embd": 96, "n_head": 6})


def test_an_assumed_head_count_is_a_warning_through_the_api(hub, tmp_path):
    """Without config.json the head count is a guess (96 // 64 = 1, where the model has 6): said, not silent."""
    shutil.copy(hub.path / "model.safetensors", tmp_path / "weights.safetensors")
    with pytest.warns(AssumedConfigWarning, match=r"assumed n_head=1 .*pass config="):
        model = GPT2.from_pretrained(tmp_path / "weights.safetensors")
    assert model.config.n_head == 1


def test_config_given_for_bare_weights_is_used_without_a_warning(hub, tmp_path):
    shutil.copy(hub.path / "model.safetensors", tmp_path / "weights.safetensors")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = GPT2.from_pretrained(tmp_path / "weights.safetensors", config=hub.path / "config.json")
    assert model.config == hub.config


def test_infer_config_for_the_124m_layout():
    c = GPT2Config()
    hub_layout = {}  # zero-strided stand-ins: shapes without 500 MB
    for name, shape in expected_shapes(c).items():
        stored = shape[::-1] if name.endswith(conv1d_weights()) else shape
        hub_layout[name.removeprefix("transformer.")] = np.broadcast_to(np.float32(0), stored)
    assert infer_config(hub_layout) == c


# --- errors: one sentence that names the problem ------------------------------------------------


def test_missing_tensor_is_named(edited_hub):
    path = edited_hub(lambda t: t.pop("h.1.mlp.c_fc.bias"))
    with pytest.raises(CheckpointError, match=r"missing transformer\.h\.1\.mlp\.c_fc\.bias"):
        GPT2.from_pretrained(path)


def test_unexpected_tensor_is_named(edited_hub):
    path = edited_hub(lambda t: t.update({"h.0.attn.q_proj.weight": np.zeros((2, 2), np.float32)}))
    with pytest.raises(CheckpointError, match=r"unexpected transformer\.h\.0\.attn\.q_proj\.weight"):
        GPT2.from_pretrained(path)


def test_missing_and_unexpected_in_one_error(edited_hub):
    path = edited_hub(lambda t: t.update({"h.3.ln_1.weight": t.pop("h.2.ln_1.weight")}))
    with pytest.raises(CheckpointError, match=r"missing transformer\.h\.2\.ln_1\.weight; unexpected transformer\.h\.3\.ln_1\.weight .*n_layer=3"):
        GPT2.from_pretrained(path)


def test_config_weights_width_mismatch_names_both(edited_hub):
    path = edited_hub(lambda t: None)
    cfg = json.loads((path / "config.json").read_text())
    cfg.update(n_embd=192, n_head=12)
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"config says vocab_size=50257, n_embd=192 but wte is \[50257, 96\]"):
        GPT2.from_pretrained(path)


def test_wrong_orientation_c_attn_is_refused_by_shape(edited_hub):
    def flip(t):
        t["h.0.attn.c_attn.weight"] = np.ascontiguousarray(t["h.0.attn.c_attn.weight"].T)

    path = edited_hub(flip)
    with pytest.raises(CheckpointError, match=r"h\.0\.attn\.c_attn\.weight is \[288, 96\] but the model expects \[96, 288\]: it is stored \[out, in\]"):
        GPT2.from_pretrained(path)


def test_untied_config_without_lm_head(untied, tmp_path):
    raw = dict(load_file(str(untied.path / "model.safetensors")))
    raw.pop("lm_head.weight")
    save_file(raw, str(tmp_path / "model.safetensors"))
    shutil.copy(untied.path / "config.json", tmp_path / "config.json")
    with pytest.raises(CheckpointError, match="tie_word_embeddings=false, so the checkpoint must carry lm_head.weight"):
        GPT2.from_pretrained(tmp_path)


def test_truncated_safetensors(hub, tmp_path):
    data = (hub.path / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[: len(data) // 2])
    shutil.copy(hub.path / "config.json", tmp_path / "config.json")
    with pytest.raises(CheckpointError, match="is not a readable safetensors file .* it may be truncated"):
        GPT2.from_pretrained(tmp_path)


class Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


def test_pickle_that_would_run_code_is_refused_and_not_run(tmp_path):
    import torch

    marker = tmp_path / "pwned"
    torch.save({"wte.weight": torch.zeros(2, 2), "payload": Exploit(marker)}, tmp_path / "pytorch_model.bin")
    (tmp_path / "config.json").write_text(json.dumps({"n_layer": 1, "n_embd": 64, "n_head": 1}))
    with pytest.raises(CheckpointError, match="refused to load .*could run code"):
        GPT2.from_pretrained(tmp_path)
    assert not marker.exists()


def test_a_bfloat16_safetensors_file_is_read_as_stored_and_loads_as_float32(hub, tmp_path):
    import torch
    from safetensors.torch import save_file as save_torch

    raw = load_file(str(hub.path / "model.safetensors"))
    save_torch({k: torch.from_numpy(v).bfloat16() for k, v in raw.items()}, str(tmp_path / "model.safetensors"))
    shutil.copy(hub.path / "config.json", tmp_path / "config.json")
    found = resolve(tmp_path)
    want = torch.from_numpy(raw["wte.weight"]).bfloat16().float().numpy()
    assert found.tensors["wte.weight"].dtype.name == "bfloat16"  # mapped, not widened on reading
    state = adapt(found.tensors, found.config, found.format)
    assert state["transformer.wte.weight"].dtype == np.float32
    np.testing.assert_array_equal(state["transformer.wte.weight"], want)


def test_a_type_error_while_reading_is_shown_as_the_bug_it_is(hub, monkeypatch):
    """A TypeError while reading is a bug, shown as one, not taken for an unreadable file."""
    import safetensors

    def broken(path, framework):
        raise TypeError("something else went wrong")

    monkeypatch.setattr(safetensors, "safe_open", broken)
    with pytest.raises(TypeError, match="something else went wrong"):
        resolve(hub.path)


def _failing_download(monkeypatch, error):
    import huggingface_hub

    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fail)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)


def test_a_full_disk_while_downloading_is_named_not_called_unreachable(monkeypatch):
    import errno

    _failing_download(monkeypatch, OSError(errno.ENOSPC, "No space left on device", "/cache/blobs/x.incomplete"))
    with pytest.raises(CheckpointError, match=r"into the Hugging Face cache: No space left on device \(/cache/blobs") as e:
        resolve("openai-community/gpt2-medium")
    assert "unreachable" not in str(e.value)


def test_a_cache_we_may_not_write_is_named(monkeypatch):
    _failing_download(monkeypatch, PermissionError(13, "Permission denied", "/root/.cache/huggingface"))
    with pytest.raises(CheckpointError, match="Permission denied"):
        resolve("gpt2-medium")


def test_no_network_is_called_unreachable(monkeypatch):
    from huggingface_hub.errors import LocalEntryNotFoundError

    _failing_download(monkeypatch, LocalEntryNotFoundError("cannot find the requested files in the disk cache"))
    with pytest.raises(CheckpointError, match="not in the Hugging Face cache and cannot be downloaded .the Hub is unreachable"):
        resolve("gpt2-medium")


def test_nonexistent_path():
    with pytest.raises(CheckpointError, match="no such file or folder: ./no/such/dir"):
        GPT2.from_pretrained("./no/such/dir")


def test_hub_id_while_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(CheckpointError, match="'gpt2-medium' is not in the Hugging Face cache .*HF_HUB_OFFLINE is set"):
        GPT2.from_pretrained("gpt2-medium")


def test_hub_id_found_in_an_existing_cache(hub, tmp_path):
    """A snapshot already in huggingface_hub's cache loads offline, as from the Hub.

    A fresh process: huggingface_hub reads HF_HUB_CACHE and HF_HUB_OFFLINE when imported.
    """
    snapshot = tmp_path / "hub" / "models--openai-community--gpt2" / "snapshots" / ("0" * 40)
    shutil.copytree(hub.path, snapshot)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0" * 40)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path), "HF_HUB_CACHE": str(tmp_path / "hub")}
    code = "from max_gpt2 import GPT2; m = GPT2.from_pretrained('openai-community/gpt2'); print(m.config.n_layer, m.tokenizer.encode('Hello world'))"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split("\n")[0] == "3 [15496, 995]"


def test_a_folder_without_weights(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match="no weights in .*expected model.safetensors or pytorch_model.bin"):
        GPT2.from_pretrained(tmp_path)


def test_safetensors_checkpoints_load_and_run_without_torch(hub):
    """torch and transformers are for the reference; a fresh process with them blocked still works."""
    code = (
        "import sys; sys.modules['torch'] = None; sys.modules['transformers'] = None\n"
        f"from max_gpt2 import GPT2; m = GPT2.from_pretrained({str(hub.path)!r})\n"
        "print(m.logits([[15496, 995]]).shape, m.generate('Hello world', 3) != '')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "(1, 2, 50257) True"


MEMORY_CHECK = """
import sys
import numpy as np
from max_gpt2.config import GPT2Config
from max_gpt2.weights import adapt, resolve

def resident():  # MB of this process's own (anonymous) memory, and of mapped files
    fields = dict(line.split(":") for line in open("/proc/self/status"))
    return {k: int(fields[k].split()[0]) / 1024 for k in ("RssAnon", "RssFile")}

import safetensors.numpy  # its code, before the count starts
before = resident()
found = resolve(sys.argv[1], config=GPT2Config(vocab_size=8192, n_positions=64, n_embd=1024, n_layer=1, n_head=16))
state = adapt(found.tensors, found.config)
total = sum(float(a.sum()) for a in state.values())  # every page of ours read
after = resident()
print(after["RssAnon"] - before["RssAnon"], after["RssFile"] - before["RssFile"])
"""


def test_a_safetensors_file_is_mapped_and_only_transposed_weights_are_copied(tmp_path):
    """wte (32 MB here) is used as stored, so it stays a view of the file: no anonymous memory
    for it. The Conv1D weights (48 MB) are transposed into new arrays, and the file's pages
    they came from are given back at once, so the file's share of resident memory is wte's.
    Measured in a fresh process, where nothing else allocates tens of MB."""
    c, inner, mb = 1024, 4096, 2**20
    shapes = {"wte.weight": (8192, c), "wpe.weight": (64, c), "ln_f.weight": (c,), "ln_f.bias": (c,),
              "h.0.attn.c_attn.weight": (c, 3 * c), "h.0.attn.c_attn.bias": (3 * c,),
              "h.0.attn.c_proj.weight": (c, c), "h.0.attn.c_proj.bias": (c,),
              "h.0.mlp.c_fc.weight": (c, inner), "h.0.mlp.c_fc.bias": (inner,),
              "h.0.mlp.c_proj.weight": (inner, c), "h.0.mlp.c_proj.bias": (c,)}
    shapes |= {f"h.0.{ln}.{p}": (c,) for ln in ("ln_1", "ln_2") for p in ("weight", "bias")}
    rng = np.random.default_rng(0)
    save_file({k: rng.standard_normal(s, dtype=np.float32) for k, s in shapes.items()}, str(tmp_path / "model.safetensors"))
    out = subprocess.run([sys.executable, "-c", MEMORY_CHECK, str(tmp_path / "model.safetensors")],
                         capture_output=True, text=True, env=dict(os.environ))
    assert out.returncode == 0, out.stderr
    anon, mapped = map(float, out.stdout.split())
    transposed, wte = (c * 3 * c + c * c + 2 * c * inner) * 4 / mb, 8192 * c * 4 / mb
    assert anon < transposed + 8, f"{anon:.0f} MB of own memory for {transposed:.0f} MB of transposed weights"
    assert mapped < wte + 8, f"{mapped:.0f} MB of the file resident for a {wte:.0f} MB wte"


def test_a_tensor_stored_at_a_misaligned_offset_is_read_aligned(tmp_path):
    """safetensors does not promise alignment: after a 3-byte tensor, a float32 one starts at an
    odd byte. Mapped as it lies it would be a misaligned view; it is copied instead."""
    from max_gpt2.weights import read_tensors

    header = {"mask": {"dtype": "U8", "shape": [3], "data_offsets": [0, 3]},
              "w": {"dtype": "F32", "shape": [2, 3], "data_offsets": [3, 27]}}
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    w = np.arange(6, dtype=np.float32).reshape(2, 3)
    (tmp_path / "odd.safetensors").write_bytes(len(text).to_bytes(8, "little") + text + bytes([1, 2, 3]) + w.tobytes())
    read = read_tensors(tmp_path / "odd.safetensors")
    assert read["w"].flags.aligned
    np.testing.assert_array_equal(read["w"], w)
    np.testing.assert_array_equal(read["mask"], [1, 2, 3])


@pytest.mark.parametrize("shape", [(1000, 1100), (1031, 1537), (64 * 17 + 1, 1025), (3, 400_000)])
def test_a_large_transposed_weight_is_copied_exactly_on_every_core(shape):
    """Big transposes are copied by several threads in blocks of rows (mapping.contiguous): every
    element lands once, in place, whatever the rows left over by the blocks and the cores."""
    from max_gpt2.checkpoints.mapping import PARALLEL_COPY, contiguous

    stored = np.random.default_rng(0).standard_normal(shape[::-1], dtype=np.float32)  # [in, out]
    assert stored.size >= PARALLEL_COPY  # the threaded path, not numpy's own copy
    ours = contiguous(stored.T)
    assert ours.flags.c_contiguous and ours.dtype == np.float32
    np.testing.assert_array_equal(ours, stored.T)
