"""GPT-2's byte-level BPE tokenizer, read from the checkpoint's own files.

The work is done by Hugging Face's `tokenizers` (the same Rust code as GPT2TokenizerFast), from
`tokenizer.json`, or from `vocab.json` + `merges.txt` configured as GPT-2 uses them.
"""

from __future__ import annotations

from pathlib import Path

from max_gpt2.errors import GenerationError, TokenizerError

EOS = "<|endoftext|>"
# The BPE files' names: Hugging Face's, then OpenAI's release's for the same two files.
BPE_FILES = (("vocab.json", "merges.txt"), ("encoder.json", "vocab.bpe"))


class GPT2Tokenizer:
    def __init__(self, tokenizer) -> None:
        self._tok = tokenizer
        self.eos_token_id = tokenizer.token_to_id(EOS)

    @classmethod
    def from_files(cls, vocab: str | Path, merges: str | Path) -> GPT2Tokenizer:
        from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

        try:
            bpe = models.BPE.from_file(str(vocab), str(merges))
        except Exception as e:
            raise TokenizerError(f"cannot read the BPE files {vocab} and {merges}: {e}") from None
        tok = Tokenizer(bpe)
        # GPT-2 splits text with its regex, maps every byte to a printable character, and
        # does not add a space before the first word.
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        # As in transformers, "<|endoftext|>" in text is the one special token, not 7 pieces.
        tok.add_special_tokens([AddedToken(EOS, special=True)])
        return cls(tok)

    @classmethod
    def from_folder(cls, folder: str | Path) -> GPT2Tokenizer:
        folder = Path(folder)
        if (folder / "tokenizer.json").is_file():
            from tokenizers import Tokenizer

            try:
                return cls(Tokenizer.from_file(str(folder / "tokenizer.json")))
            except Exception as e:
                raise TokenizerError(f"cannot read {folder / 'tokenizer.json'}: {e}") from None
        for vocab, merges in BPE_FILES:
            if (folder / vocab).is_file() and (folder / merges).is_file():
                return cls.from_files(folder / vocab, folder / merges)
        raise TokenizerError(
            f"no tokenizer in {folder}: it needs tokenizer.json, or vocab.json and merges.txt "
            "(or pass --tokenizer with a folder that has them)"
        )

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as e:  # a byte that was not UTF-8 in argv arrives as a lone surrogate
            raise GenerationError(f"the text is not valid Unicode: character {e.start} is U+{ord(text[e.start]):04X}, "
                                  "a lone surrogate (often a byte that was not UTF-8); give the text as UTF-8") from None
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=False)

    def stream(self) -> TextStream:
        return TextStream(self)


class TextStream:
    """Turns tokens into text as they arrive, never splitting a multi-byte character.

    Byte-level BPE can end a token in the middle of a UTF-8 character (an emoji is often two or
    three tokens); such tokens are held back until the character is complete.
    """

    MAX_HELD = 4  # a UTF-8 character is at most 4 bytes, so at most 4 tokens can be incomplete

    def __init__(self, tokenizer: GPT2Tokenizer) -> None:
        self.tokenizer = tokenizer
        self.pending: list[int] = []

    def push(self, token_id: int) -> str:
        self.pending.append(int(token_id))
        text = self.tokenizer.decode(self.pending)
        if text.endswith("\ufffd") and len(self.pending) < self.MAX_HELD:
            return ""
        self.pending = []
        return text

    def flush(self) -> str:
        text = self.tokenizer.decode(self.pending) if self.pending else ""
        self.pending = []
        return text
