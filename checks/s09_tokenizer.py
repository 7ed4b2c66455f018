"""Step 09: GPT2Tokenizer against transformers' GPT2TokenizerFast, both from GPT-2's real
vocab.json and merges.txt."""

from __future__ import annotations

import tempfile
from functools import cache

from checks.report import Failure, Passed

STEP, TITLE = 9, "tokenization (GPT2Tokenizer)"
HINTS = {
    "9.1": "Tokenizer(models.BPE.from_file(str(vocab), str(merges)))",
    "9.2": "tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)",
    "9.3": "tok.decoder = decoders.ByteLevel()",
    "9.4": 'tok.add_special_tokens([AddedToken("<|endoftext|>", special=True)])',
    "9.5": "self._tok.encode(text, add_special_tokens=False).ids",
    "9.6": "self._tok.decode(list(ids), skip_special_tokens=False)",
}
TEXTS = [
    "Hello world",
    " leading space, and  two spaces",
    "Numbers 1234567 and symbols: #$%&*()[]{}",
    "naïve café — “quotes” … 日本語 🎉👩‍👩‍👧",
    "line one\nline two\n\n\ttabbed\r\n",
    "don't won't y'all I'm",
]


@cache
def theirs():
    from transformers import GPT2TokenizerFast

    from max_gpt2.reference import copy_gpt2_tokenizer

    with tempfile.TemporaryDirectory() as folder:
        copy_gpt2_tokenizer(folder)
        return GPT2TokenizerFast.from_pretrained(folder)


def prepare(code, graph):
    def judge():
        from max_gpt2.reference import gpt2_tokenizer_files

        cls = code.get(STEP, "GPT2Tokenizer")
        check = "GPT2Tokenizer.from_files(vocab.json, merges.txt) builds"
        ours = code.run(check, cls.from_files, *map(str, gpt2_tokenizer_files()), todo="9.1", hints=HINTS,
                        expected="a GPT2Tokenizer")
        ref = theirs()

        check = 'encode("Hello world") is GPT-2\'s [15496, 995]'
        got = code.run(check, ours.encode, "Hello world", todo="9.5", hints=HINTS, expected="[15496, 995]")
        if list(got) != [15496, 995]:
            raise Failure(check, todo=_todo_for_ids(got), expected="[15496, 995], as transformers' GPT2TokenizerFast",
                          got=repr(got), looks_like=_looks_like_ids(got), hint=HINTS[_todo_for_ids(got)])
        yield Passed(check)

        check = f"encode matches transformers' GPT2TokenizerFast on {len(TEXTS)} texts (spaces, digits, accents, " \
                "CJK, emoji, newlines)"
        for text in TEXTS:
            want = ref.encode(text)
            got = code.run(check, ours.encode, text, todo="9.5", hints=HINTS, expected=str(want))
            if list(got) != want:
                raise Failure(check, todo="9.2", expected=f"{text!r} -> {want}", got=f"{list(got)}",
                              looks_like=_looks_like_ids(got), hint=HINTS["9.2"])
        yield Passed(check)

        check = '"<|endoftext|>" is the one special token, id 50256 (eos_token_id)'
        text = "the end<|endoftext|>A new"
        want = ref.encode(text)
        got = code.run(check, ours.encode, text, todo="9.5", hints=HINTS, expected=str(want))
        if list(got) != want or getattr(ours, "eos_token_id", None) != 50256:
            raise Failure(check, todo="9.4", expected=f"{text!r} -> {want}, eos_token_id 50256",
                          got=f"{list(got)}, eos_token_id {getattr(ours, 'eos_token_id', None)}",
                          looks_like="<|endoftext|> split into ordinary pieces" if len(got) > len(want) else "",
                          hint=HINTS["9.4"])
        yield Passed(check)

        check = "decode gives back the text, as transformers' decode does"
        for text in [*TEXTS, "the end<|endoftext|>A new"]:
            ids = ref.encode(text)
            want = ref.decode(ids)
            got = code.run(check, ours.decode, ids, todo="9.6", hints=HINTS, expected=repr(want))
            if got != want:
                todo = "9.3" if isinstance(got, str) and ("Ġ" in got or "Ċ" in got) else "9.6"
                raise Failure(check, todo=todo, expected=repr(want), got=repr(got),
                              looks_like="no ByteLevel decoder: the byte characters (Ġ is a space) are left in"
                              if todo == "9.3" else "", hint=HINTS[todo])
        yield Passed(check)

    return judge


def _todo_for_ids(ids) -> str:
    return "9.2" if list(ids) in ([18435, 995], [39, 5037, 1764]) else "9.5"


def _looks_like_ids(ids) -> str:
    ids = list(ids)
    if ids[:1] == [18435]:
        return "a space added before the first word (add_prefix_space=True): 18435 is ' Hello'"
    if ids == [39, 5037, 1764] or None in ids:
        return "no ByteLevel pre-tokenizer: the spaces are lost and words are not split as GPT-2 splits them"
    return ""
