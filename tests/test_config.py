import json

import pytest

from max_gpt2.config import PRESETS, ConfigError, GPT2Config


def test_defaults_are_gpt2_124m():
    c = GPT2Config()
    assert (c.vocab_size, c.n_positions, c.n_embd, c.n_layer, c.n_head) == (50257, 1024, 768, 12, 12)
    assert c.inner_dim == 3072 and c.head_dim == 64 and c.activation_function == "gelu_new"


@pytest.mark.parametrize(
    "name, layers, width, heads",
    [("gpt2", 12, 768, 12), ("gpt2-medium", 24, 1024, 16), ("gpt2-large", 36, 1280, 20),
     ("gpt2-xl", 48, 1600, 25), ("distilgpt2", 6, 768, 12), ("openai-community/gpt2-xl", 48, 1600, 25)],
)
def test_presets(name, layers, width, heads):
    c = GPT2Config.preset(name)
    assert (c.n_layer, c.n_embd, c.n_head) == (layers, width, heads)


def test_presets_match_transformers_defaults_for_the_rest():
    from transformers import GPT2Config as HF

    hf = HF()
    for preset in PRESETS:
        c = GPT2Config.preset(preset)
        assert (c.vocab_size, c.n_positions, c.layer_norm_epsilon) == (hf.vocab_size, hf.n_positions, hf.layer_norm_epsilon)


def test_reads_the_hubs_config_json_and_ignores_training_fields(tmp_path):
    # openai-community/gpt2's config.json, as published (n_ctx, dropout rates, task params).
    hub = {
        "activation_function": "gelu_new", "architectures": ["GPT2LMHeadModel"], "attn_pdrop": 0.1,
        "bos_token_id": 50256, "embd_pdrop": 0.1, "eos_token_id": 50256, "initializer_range": 0.02,
        "layer_norm_epsilon": 1e-05, "model_type": "gpt2", "n_ctx": 1024, "n_embd": 768, "n_head": 12,
        "n_layer": 12, "n_positions": 1024, "resid_pdrop": 0.1, "summary_activation": None,
        "summary_first_dropout": 0.1, "summary_proj_to_labels": True, "summary_type": "cls_index",
        "summary_use_proj": True, "task_specific_params": {"text-generation": {"do_sample": True, "max_length": 50}},
        "vocab_size": 50257,
    }
    (tmp_path / "config.json").write_text(json.dumps(hub))
    assert GPT2Config.from_json(tmp_path / "config.json") == GPT2Config()


def test_transformers_config_round_trips():
    from max_gpt2.reference import hf_config

    c = GPT2Config(n_layer=2, n_embd=96, n_head=6, n_inner=200, vocab_size=50260, tie_word_embeddings=False)
    assert GPT2Config.from_dict(hf_config(c).to_dict()) == c


def test_n_ctx_stands_for_n_positions():
    assert GPT2Config.from_dict({"n_ctx": 256}).n_positions == 256


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"model_type": "llama"}, "model_type='llama' is not GPT-2"),
        ({"n_embd": 100, "n_head": 12}, "n_embd=100 is not divisible by n_head=12"),
        ({"activation_function": "gelu_magic"}, "activation_function='gelu_magic' is not supported"),
        ({"n_layer": 0}, "n_layer=0 must be a positive integer"),
        ({"layer_norm_epsilon": 0}, "layer_norm_epsilon=0 must be > 0"),
    ],
)
def test_refuses_what_it_cannot_run(fields, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        GPT2Config.from_dict(fields)


def test_unreadable_config_json(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="is not valid JSON"):
        GPT2Config.from_json(tmp_path / "config.json")


def test_unknown_preset():
    with pytest.raises(ConfigError, match="no preset named 'gpt3'"):
        GPT2Config.preset("gpt3")
