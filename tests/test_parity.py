"""The proof: our compiled MAX graph gives transformers' logits on the same weights."""

import io
import os
from pathlib import Path

import numpy as np
import pytest

from max_gpt2 import GPT2, graphs
from max_gpt2.config import GPT2Config
from max_gpt2.errors import KernelBuildError
from max_gpt2.reference import make_checkpoint, reference_greedy, reference_logits
from max_gpt2.verify import TOLERANCE, verify


def worst_logit_gap(model, reference, seed=0) -> float:
    """max |Δlogit| over batches of several lengths, all through the one compiled graph."""
    rng = np.random.default_rng(seed)
    gap = 0.0
    for batch, length in ((1, 1), (3, 5), (2, 17), (2, model.config.n_positions)):
        ids = rng.integers(0, model.config.vocab_size, (batch, length))
        ours = model.logits(ids)
        assert ours.shape == (batch, length, model.config.vocab_size) and ours.dtype == np.float32
        gap = max(gap, float(np.abs(ours - reference_logits(reference, ids)).max()))
    return gap


def test_logits_match_transformers_hub_layout(hub):
    assert worst_logit_gap(hub.model, hub.reference) <= TOLERANCE


def test_logits_match_transformers_save_pretrained_layout(pretrained):
    assert worst_logit_gap(pretrained.model, pretrained.reference) <= TOLERANCE


def test_logits_match_transformers_pytorch_model_bin(pickled):
    assert worst_logit_gap(pickled.model, pickled.reference) <= TOLERANCE


def test_logits_match_transformers_untied_extended_vocabulary(untied):
    assert untied.model.config.vocab_size == 50260 and not untied.model.config.tie_word_embeddings
    assert worst_logit_gap(untied.model, untied.reference) <= TOLERANCE


def test_one_compiled_graph_serves_every_batch_and_length(hub):
    messages = []
    model = GPT2(hub.config, hub.model.state, progress=messages.append)
    assert worst_logit_gap(model, hub.reference, seed=1) <= TOLERANCE
    assert [m for m in messages if m.startswith("compiling")] == ["compiling the logits graph (minutes the first "
                                                                  "time for a model size, seconds after)"]


def test_compiled_graph_files_are_reused_only_for_the_same_graph(hub, pretrained, untied, monkeypatch):
    """Each compiled graph is kept as a file named by a digest of the graph (graphs.store()).
    A model with the same graph and other weights loads that file instead of compiling, and its
    own weights are bound to it; a model whose graph differs does not get that file. If MAX
    stopped calling our store's `compile_reusing_mefs`, no file would be kept or loaded, and
    this fails."""
    store = graphs.store()
    compile_ = type(store).compile
    compiled = []  # what each compile was given: a Graph, or the Path of a kept file

    def spy(self, model, **options):
        compiled.append(model)
        return compile_(self, model, **options)

    monkeypatch.setattr(type(store), "compile", spy)
    GPT2.from_pretrained(hub.path).compile()  # the logits, prefill and decode graphs: kept, or loaded
    compiled.clear()

    same = GPT2.from_pretrained(pretrained.path)  # the same configuration, other weights
    assert worst_logit_gap(same, pretrained.reference) <= TOLERANCE
    prompt = [5, 17, 300, 2]
    ours = [int(t[0]) for t in same.generate_tokens([prompt], 12)]  # the prefill and decode graphs
    assert ours == reference_greedy(pretrained.reference, prompt, 12)
    assert len(compiled) == 3 and all(isinstance(c, Path) and c.is_file() for c in compiled), compiled
    hub_file = compiled[0]  # the logits graph's
    compiled.clear()

    other = GPT2.from_pretrained(untied.path)  # another graph: an extended vocabulary, its own head
    assert worst_logit_gap(other, untied.reference) <= TOLERANCE
    assert compiled and hub_file not in compiled


class Compiled:
    """Stands in for a compiled graph: `export_mef` is all `graphs.keep` asks of one."""

    def __init__(self, fail=False):
        self.fail = fail

    def export_mef(self, path):
        Path(path).write_bytes(b"half" if self.fail else b"mef")
        if self.fail:
            raise OSError("No space left on device")


def test_a_graph_file_that_cannot_be_written_is_only_not_kept(tmp_path):
    graphs.keep(Compiled(fail=True), tmp_path / "graphs" / "GPT2Prefill-0.mef")
    assert list((tmp_path / "graphs").iterdir()) == []  # neither the file nor its partial


def test_graph_files_beyond_the_limit_are_dropped_least_recently_used_first(tmp_path):
    folder = tmp_path / "graphs"
    for i in range(4):
        graphs.keep(Compiled(), folder / f"g{i}.mef", most=3)
        os.utime(folder / f"g{i}.mef", (1000 + i, 1000 + i))
    assert sorted(p.name for p in folder.iterdir()) == ["g1.mef", "g2.mef", "g3.mef"]
    os.utime(folder / "g1.mef")  # used just now (a load touches its file)
    graphs.keep(Compiled(), folder / "g4.mef", most=3)
    assert sorted(p.name for p in folder.iterdir()) == ["g1.mef", "g3.mef", "g4.mef"]


def test_kernels_build_without_a_cache_folder_and_write_nothing_here(tmp_path, monkeypatch):
    monkeypatch.setattr(graphs, "cache_folder", lambda: None)
    monkeypatch.chdir(tmp_path)
    library = graphs.kernel_library()
    assert library.is_file() and tmp_path not in library.parents
    assert list(tmp_path.iterdir()) == []


def test_a_failed_kernel_build_shows_the_compiler_and_leaves_nothing(tmp_path, monkeypatch):
    sources = tmp_path / "kernels"
    sources.mkdir()
    (sources / "__init__.mojo").write_text("")
    (sources / "broken.mojo").write_text("def f() -> Int:\n    return undefined_name\n")
    monkeypatch.setattr(graphs, "cache_folder", lambda: tmp_path / "cache")
    with pytest.raises(KernelBuildError, match="undefined_name"):
        graphs.kernel_library(sources)
    assert [p for p in (tmp_path / "cache").rglob("*")] == []


def test_skipped_c_proj_transpose_is_caught(hub):
    """attn.c_proj is square, so forgetting its transpose loads without complaint; only numbers show it."""
    state = dict(hub.model.state)
    for i in range(hub.config.n_layer):
        name = f"transformer.h.{i}.attn.c_proj.weight"
        state[name] = np.ascontiguousarray(state[name].T)  # back to Conv1D orientation
    sabotaged = GPT2(hub.config, state, tokenizer=hub.model.tokenizer, path=hub.path)
    assert worst_logit_gap(sabotaged, hub.reference) > 100 * TOLERANCE
    report = io.StringIO()
    assert verify(sabotaged, out=report) == 1
    assert "✗ max |Δlogit|" in report.getvalue() and "FAILED" in report.getvalue()


def test_verify_passes_on_the_real_thing(hub):
    report = io.StringIO()
    assert verify(hub.model, out=report) == 0, report.getvalue()
    assert "✓ greedy tokens" in report.getvalue()


@pytest.fixture(scope="module")
def wide_weights(tmp_path_factory):
    """Weights at std 1.0 in the hub fixture's shape (no new compile): logits that spread over
    tens, whose float32 rounding differs between MAX and transformers by more than TOLERANCE."""
    from max_gpt2.reference import ODD

    path = tmp_path_factory.mktemp("std1")
    reference = make_checkpoint(path, ODD, seed=3, initializer_range=1.0)
    model = GPT2.from_pretrained(path)
    assert worst_logit_gap(model, reference) > TOLERANCE  # else the tests below prove nothing new
    return model


def test_verify_passes_where_float32_rounding_alone_exceeds_the_tolerance(wide_weights):
    """Both float32 results are measured against transformers in float64: MAX's is no farther
    from it than FLOAT32_SPREAD times transformers' own."""
    report = io.StringIO()
    assert verify(wide_weights, out=report) == 0, report.getvalue()
    assert "against float64" in report.getvalue() and "✓ greedy tokens" in report.getvalue()


def test_verify_still_catches_the_skipped_transpose_on_such_weights(wide_weights):
    state = dict(wide_weights.state)
    for i in range(wide_weights.config.n_layer):
        name = f"transformer.h.{i}.attn.c_proj.weight"
        state[name] = np.ascontiguousarray(state[name].T)
    sabotaged = GPT2(wide_weights.config, state, tokenizer=wide_weights.tokenizer, path=wide_weights.path)
    report = io.StringIO()
    assert verify(sabotaged, out=report) == 1, report.getvalue()
    assert "✗ max |Δlogit|" in report.getvalue() and "against float64" in report.getvalue()


def test_logits_match_at_the_full_124m_configuration(tmp_path):
    reference = make_checkpoint(tmp_path, GPT2Config(), "hub", initializer_range=0.02, tokenizer=False)
    model = GPT2.from_pretrained(tmp_path)
    assert model.num_parameters == 124_439_808  # as published for gpt2
    ids = np.random.default_rng(0).integers(0, 50257, (2, 24))
    assert np.abs(model.logits(ids) - reference_logits(reference, ids)).max() <= TOLERANCE
