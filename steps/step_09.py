"""Step 09 · Tokenization: GPT-2's byte-level BPE

What you build: `GPT2Tokenizer`, which turns text into GPT-2's token ids and back, read from
the checkpoint's own vocab.json (50,257 tokens) and merges.txt (50,000 merge rules).

Why: the model only ever sees integers. It must get exactly the ids it was trained on: a
tokenizer that splits "Hello world" as [15496, 995] where GPT-2 expects it is right; any other
split, however reasonable, feeds the model text it has never seen.

How GPT-2 tokenizes, which you configure rather than write (Hugging Face's `tokenizers` library
runs the algorithm, in Rust, exactly as transformers' GPT2TokenizerFast does):
- pre-tokenizer: split the text with GPT-2's regex (words with their leading space, numbers,
  punctuation) and map every byte to a printable character ("Ġ" stands for a space), so that
  any text, in any script or emoji, has a spelling in the vocabulary;
- model: byte-pair encoding, applying merges.txt's rules in order;
- decoder: map the characters back to bytes, and the bytes back to UTF-8 text;
- "<|endoftext|>" is one special token (id 50256), never split into "<", "|", ...

When finished, it lives in: max_gpt2/tokenizer.py, class GPT2Tokenizer.

Check:   pixi run s09   (or: make s09; the checker is checks/s09_tokenizer.py)
Compare: python solutions/solution_09.py
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers  # noqa: F401

EOS = "<|endoftext|>"


class GPT2Tokenizer:
    def __init__(self, tokenizer: Tokenizer) -> None:
        self._tok = tokenizer
        self.eos_token_id = tokenizer.token_to_id(EOS)

    @classmethod
    def from_files(cls, vocab: str | Path, merges: str | Path) -> GPT2Tokenizer:
        # TODO 9.1: a Tokenizer whose model is the BPE of vocab.json and merges.txt.
        #   Hint: Tokenizer(models.BPE.from_file(str(vocab), str(merges)))
        # TODO 9.2: its pre_tokenizer: GPT-2's byte-level split. GPT-2 does not put a space in
        #   front of the first word (pre_tokenizers.ByteLevel has an option for that).
        # TODO 9.3: its decoder, the inverse byte mapping (the decoders module).
        # TODO 9.4: "<|endoftext|>" as a special token: tok.add_special_tokens([AddedToken(EOS, special=True)])
        # Then: return cls(tok)
        raise NotImplementedError("TODO 9.1: build the byte-level BPE tokenizer")

    def encode(self, text: str) -> list[int]:
        # TODO 9.5: the ids of `text`, with nothing added around it.
        #   Hint: self._tok.encode(text, add_special_tokens=False) returns an Encoding; .ids
        raise NotImplementedError("TODO 9.5: encode")

    def decode(self, ids: list[int]) -> str:
        # TODO 9.6: the text of `ids`, special tokens included.
        #   Hint: self._tok.decode(ids, skip_special_tokens=False)
        raise NotImplementedError("TODO 9.6: decode")
