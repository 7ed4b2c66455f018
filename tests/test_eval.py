"""`max-gpt2 eval`: perplexity by transformers' sliding windows, and KL / top-1 agreement with a
float32 model, checked against transformers' own loss and torch's KL on the same weights.

Windows of 32 tokens (ODD's context is 128) give a short text several windows.
"""

import io
import json
import math

import numpy as np
import pytest

from max_gpt2.evaluate import evaluate, read_text, windows
from max_gpt2.progress import Bar
from tests.test_cli import assert_one_clear_error, run

TEXT = (
    "The quick brown fox jumps over the lazy dog. It was a bright cold day in April, and the clocks were "
    "striking thirteen. Winston Smith, his chin nuzzled into his breast in an effort to escape the vile wind, "
    "slipped quickly through the glass doors of Victory Mansions, though not quickly enough to prevent a "
    "swirl of gritty dust from entering along with him. The hallway smelt of boiled cabbage and old rag mats. "
    "At one end of it a coloured poster, too large for indoor display, had been tacked to the wall."
)
RELATIVE = 1e-3


def transformers_windows(ref, ids, max_length, stride):
    """The loop of transformers' "Perplexity of fixed-length models", yielding per window the
    logits, the labels transformers scores after its shift by one (context is -100) and the loss;
    None for a window with nothing left to score."""
    import torch

    seq = torch.tensor([ids])
    previous_end = 0
    for begin in range(0, len(ids), stride):
        end = min(begin + max_length, len(ids))
        target_length = end - previous_end
        input_ids = seq[:, begin:end]
        labels = input_ids.clone()
        labels[:, :-target_length] = -100
        shifted = labels[0, 1:]
        if (shifted != -100).any():
            with torch.no_grad():
                out = ref(input_ids, labels=labels)
            yield out.logits[0, :-1].double(), shifted, out.loss.item()
        previous_end = end
        if end == len(ids):
            break


def transformers_perplexity(ref, ids, max_length, stride):
    """Each window's mean loss weighted by the number of labels it actually scored."""
    nll, scored = 0.0, 0
    for _, labels, loss in transformers_windows(ref, ids, max_length, stride):
        n = int((labels != -100).sum())
        nll, scored = nll + loss * n, scored + n
    return math.exp(nll / scored), scored


def torch_kl_and_agreement(model_ref, float32_ref, ids, max_length, stride):
    import torch
    import torch.nn.functional as F

    kl, agreed, scored = 0.0, 0, 0
    for (q, labels, _), (p, _, _) in zip(transformers_windows(model_ref, ids, max_length, stride),
                                         transformers_windows(float32_ref, ids, max_length, stride)):
        keep = labels != -100
        logq, logp = F.log_softmax(q[keep], -1), F.log_softmax(p[keep], -1)
        kl += F.kl_div(logq, logp, log_target=True, reduction="sum").item()  # KL(p || q)
        agreed += int((logp.argmax(-1) == logq.argmax(-1)).sum())
        scored += int(keep.sum())
    return kl / scored, agreed / scored


@pytest.fixture(scope="module")
def ids(hub):
    tokens = hub.model.tokenizer.encode(TEXT)
    assert 100 < len(tokens) < 128
    return tokens


@pytest.mark.parametrize("max_length, stride", [(32, 12), (32, 32), (None, None), (128, 100)])
def test_perplexity_matches_transformers_over_sliding_windows(hub, ids, max_length, stride):
    ours = evaluate(hub.model, ids, max_length=max_length, stride=stride)
    theirs, scored = transformers_perplexity(hub.reference, ids, max_length or 128, stride or 64)
    assert ours.perplexity == pytest.approx(theirs, rel=RELATIVE)
    assert ours.scored == scored
    if max_length == 32:
        assert ours.windows >= 4


def test_every_token_after_the_first_is_scored_once_with_its_context():
    for n, max_length, stride in [(200, 32, 12), (33, 32, 16), (32, 32, 16), (5, 32, 16), (2, 2, 1), (1000, 128, 127)]:
        scored = []
        for w in windows(n, max_length, stride):
            assert w.end - w.begin <= max_length
            for t in range(w.scored, w.end):
                assert t - w.begin >= min(t, max_length - stride)  # the context promised
            scored += range(w.scored, w.end)
        assert scored == list(range(1, n)), (n, max_length, stride)


def test_without_overlap_each_windows_first_token_goes_unscored_as_in_transformers():
    plan = windows(100, 32, 32)
    assert [(w.begin, w.scored) for w in plan] == [(0, 1), (32, 33), (64, 65), (96, 97)]
    assert len(windows(97, 32, 32)) == 3  # a last window of one token has nothing to score: left out


def two_models(hub, pretrained, edited_hub):
    """Two checkpoints of one config: seeded apart (far), and one with noise on one layer (close)."""
    from max_gpt2 import GPT2
    from max_gpt2.reference import load_reference

    def noise(raw):
        w = raw["h.2.mlp.c_proj.weight"]
        raw["h.2.mlp.c_proj.weight"] = (w + np.random.default_rng(0).normal(0, 0.2 * w.std(), w.shape)).astype(w.dtype)

    folder = edited_hub(noise)
    return {"seeded apart": (pretrained.model, pretrained.reference),
            "one layer noisy": (GPT2.from_pretrained(folder), load_reference(folder))}


@pytest.mark.parametrize("pair", ["seeded apart", "one layer noisy"])
def test_kl_and_top1_agreement_match_torch(hub, pretrained, edited_hub, ids, pair):
    model, model_ref = two_models(hub, pretrained, edited_hub)[pair]
    ours = evaluate(model, ids, max_length=32, stride=12, reference=hub.model)
    kl, agreement = torch_kl_and_agreement(model_ref, hub.reference, ids, 32, 12)
    assert ours.kl == pytest.approx(kl, rel=RELATIVE)
    assert abs(ours.agreement - agreement) <= 1 / ours.scored  # a near tie may rank apart in float32
    if pair == "one layer noisy":
        assert 0.3 < ours.agreement < 0.95, ours.agreement  # so that a wrong count would show


def test_a_models_own_init_is_about_as_perplexed_as_its_vocabulary_is_large(tmp_path):
    """At GPT-2's init (std 0.02) logits are nearly flat: perplexity near the vocabulary size
    (ODD keeps GPT-2's 50,257 tokens)."""
    from max_gpt2 import GPT2
    from max_gpt2.reference import ODD, make_checkpoint

    make_checkpoint(tmp_path, ODD, initializer_range=0.02)
    model = GPT2.from_pretrained(tmp_path)
    result = evaluate(model, model.tokenizer.encode(read_text(None)[0])[:600])
    assert 0.95 * ODD.vocab_size < result.perplexity < 1.1 * ODD.vocab_size, result.perplexity


def test_gpt2_124m_at_its_own_init_is_about_as_perplexed_as_its_vocabulary_is_large(tmp_path):
    """The same at the real shape, whose logits graph test_parity compiles anyway: two windows."""
    from max_gpt2 import GPT2, GPT2Config
    from max_gpt2.reference import make_checkpoint

    make_checkpoint(tmp_path, GPT2Config(), initializer_range=0.02)
    model = GPT2.from_pretrained(tmp_path)
    result = evaluate(model, model.tokenizer.encode(read_text(None)[0])[:1100])
    assert result.windows == 2 and result.scored == 1099
    assert 0.9 * 50257 < result.perplexity < 1.1 * 50257, result.perplexity


def test_eval_command_prints_transformers_perplexity_as_json(hub, ids, tmp_path):
    text = tmp_path / "text.txt"
    text.write_text(TEXT)
    result = run("eval", "--model", str(hub.path), str(text), "--max-length", "32", "--stride", "12", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    theirs, scored = transformers_perplexity(hub.reference, ids, 32, 12)
    assert report["perplexity"] == pytest.approx(theirs, rel=RELATIVE) and report["scored"] == scored
    assert report["text"] == str(text) and report["against"] is None


def test_float32_against_float32_is_zero_kl_and_full_agreement(hub):
    """Without FILE the text is Python's own documentation, and the command says so."""
    result = run("eval", "--model", str(hub.path), "--max-tokens", "200", "--max-length", "64", "--against",
                 "float32", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert "pydoc_data/topics.py" in report["text"] and report["tokens"] == 200
    assert report["against"] == {"dtype": "float32", "kl": 0.0, "top1_agreement": 1.0}


def test_the_plain_bar_prints_a_line_a_tenth():
    out = io.StringIO()
    with Bar("windows", stream=out) as bar:
        for done in range(1, 101):
            bar(done, 100, f"at {done}")
    lines = out.getvalue().splitlines()
    assert len(lines) == 11 and lines[-1] == "· windows 100/100: at 100"


@pytest.fixture
def files(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "one.txt").write_text("Hello")
    (tmp_path / "latin1.txt").write_bytes("café".encode("latin-1"))
    return tmp_path


BAD = [
    (["{dir}/missing.txt"], "no such file"),
    (["{dir}/empty.txt"], "is empty"),
    (["{dir}"], "is a folder"),
    (["{dir}/latin1.txt"], "not UTF-8"),
    (["{dir}/one.txt"], "the text is 1 token"),
    (["--max-tokens", "1"], "--max-tokens must be at least 2"),
    (["--stride", "40", "--max-length", "32"], "--stride 40 is longer than the window (32 tokens)"),
    (["--stride", "200"], "--stride 200 is longer than the window (128 tokens)"),
    (["--stride", "0"], "--stride must be at least 1"),
    (["--max-length", "1"], "--max-length 1 is too short"),
    (["--max-length", "129"], "does not fit the model's context of 128"),
]


@pytest.mark.parametrize("options, message", BAD, ids=[m for _, m in BAD])
def test_bad_input_is_one_clear_line(hub, files, options, message):
    result = run("eval", "--model", str(hub.path), *(o.format(dir=files) for o in options))
    assert_one_clear_error(result, message)
    assert "compiling" not in result.stderr  # found before the slow part
