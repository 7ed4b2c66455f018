"""Every error users see, in one place: each message is a sentence that says what to fix.

The command line prints a `GPT2Error` as one line and exits non-zero, without a traceback;
anything else escaping is a bug.
"""


class GPT2Error(Exception):
    """An error caused by the user's input (a path, a checkpoint, an option), not a bug."""


class ConfigError(GPT2Error):
    """A configuration this implementation cannot run."""


class CheckpointError(GPT2Error):
    """A checkpoint that cannot be found, read, or loaded into GPT-2."""


class TokenizerError(GPT2Error):
    """Tokenizer files that are missing or unreadable."""


class SettingsError(GPT2Error):
    """A sampling or generation setting out of range."""


class GenerationError(GPT2Error):
    """Input to the model that it cannot run: token ids, prompt lengths, the context limit."""


class EvaluationError(GPT2Error):
    """A text or a window setting perplexity cannot be measured with: a missing or empty file,
    too few tokens, a stride or window that does not fit."""


class PrecisionError(GPT2Error):
    """A weight precision (dtype, quantize) this implementation cannot run, or a command that needs float32."""


class KernelBuildError(GPT2Error):
    """Our Mojo kernels did not build; the message carries the compiler's output."""


class AssumedConfigWarning(UserWarning):
    """A config value guessed, not read (a head count from GPT-2's head size of 64): the model may be wrong."""


class ServeError(GPT2Error):
    """`max-gpt2 serve` cannot start MAX Serve: the `serve` extra missing, or the server failing to start."""
