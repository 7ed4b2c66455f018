"""The proof: our compiled MAX graph gives transformers' logits on the same weights."""

import io
from pathlib import Path

import numpy as np
import pytest

from max_gpt2 import GPT2
from max_gpt2.config import GPT2Config
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
    graph = hub.model.logits_graph
    worst_logit_gap(hub.model, hub.reference, seed=1)
    assert hub.model.logits_graph is graph


def test_compiled_graph_files_are_reused_only_for_the_same_graph(hub, pretrained, untied, monkeypatch):
    """Each compiled graph is kept as a file named by a digest of the graph (engine._GraphFiles).
    A model with the same graph and other weights loads that file instead of compiling, and its
    own weights are bound to it; a model whose graph differs does not get that file."""
    from max_gpt2 import engine

    files = engine._graph_files()
    compile_ = type(files).compile
    compiled = []  # what each compile was given: a Graph, or the Path of a kept file

    def spy(self, model, **options):
        compiled.append(model)
        return compile_(self, model, **options)

    monkeypatch.setattr(type(files), "compile", spy)
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


def test_a_graph_file_that_cannot_be_written_is_only_not_kept(tmp_path):
    from max_gpt2.engine import _keep

    class Compiled:
        def export_mef(self, path):
            Path(path).write_bytes(b"half")
            raise OSError("No space left on device")

    _keep(Compiled(), tmp_path / "graphs" / "GPT2Step-0.mef")
    assert list((tmp_path / "graphs").iterdir()) == []  # neither the file nor its partial


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


def test_logits_match_at_the_full_124m_configuration(tmp_path_factory):
    path = tmp_path_factory.mktemp("gpt2-124m")
    reference = make_checkpoint(path, GPT2Config(), "hub", initializer_range=0.02, tokenizer=False)
    model = GPT2.from_pretrained(path)
    assert model.num_parameters == 124_439_808  # as published for gpt2
    ids = np.random.default_rng(0).integers(0, 50257, (2, 24))
    assert np.abs(model.logits(ids) - reference_logits(reference, ids)).max() <= TOLERANCE
