"""`max-gpt2`: chat with GPT-2 (the default), generate once, verify against transformers, benchmark,
measure perplexity; inspect a checkpoint's mapping, convert one to a Hugging Face folder; serve it
over an OpenAI-compatible HTTP API (MAX Serve).

Errors caused by input (a path, a checkpoint, an option) print one line and exit 1; no traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import warnings

from max_gpt2.errors import AssumedConfigWarning, GPT2Error
from max_gpt2.precision import add_precision_options, precision_from
from max_gpt2.progress import Status

COMMANDS = ("chat", "generate", "verify", "inspect", "convert", "bench", "eval", "serve")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or (argv[0] not in COMMANDS and argv[0] not in ("-h", "--help", "--version")):
        argv.insert(0, "chat")
    args = parser().parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        return args.run(args)
    except GPT2Error as e:
        print(f"max-gpt2: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130


class _Parser(argparse.ArgumentParser):
    """Reports a mistake in the arguments as one line, like every other error, not the usage."""

    def error(self, message: str):
        self.exit(2, f"max-gpt2: error: {message} (see '{self.prog} --help')\n")


def parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="max-gpt2",
        description="OpenAI's GPT-2 as a compiled Modular MAX graph. Without a command: chat.",
        epilog="Run 'max-gpt2 COMMAND --help' for a command's options.",
    )
    p.add_argument("--version", action="version", version=f"max-gpt2 {_version()}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    chat = sub.add_parser("chat", help="type prompts, watch GPT-2 continue them (the default)",
                          description="Type a prompt, watch GPT-2 continue it. /help lists the settings commands.")
    _model_options(chat)
    _generation_options(chat, temperature=0.8, top_k=50, top_p=0.95, max_new_tokens=100)
    chat.set_defaults(run=_run_chat)

    gen = sub.add_parser("generate", help="continue one prompt and print the continuation, for scripts",
                         description="Continue one prompt and print the continuation.")
    _model_options(gen)
    gen.add_argument("--prompt", required=True, metavar="TEXT", help="the text to continue")
    _generation_options(gen, temperature=0.8, top_k=50, top_p=0.95, max_new_tokens=100)
    gen.set_defaults(run=_run_generate)

    ver = sub.add_parser("verify", help="prove a checkpoint runs exactly as in transformers",
                         description="Parameter count, max |logit difference| and greedy agreement with "
                                     "transformers on the same weights, and the loss on an English sentence. "
                                     "Exits 1 when they disagree. Needs torch and transformers.")
    _model_options(ver)
    ver.set_defaults(run=_run_verify)

    ins = sub.add_parser("inspect", help="show how a checkpoint's tensors become GPT-2's parameters",
                         description="Every stored tensor's name and shape, ours, and what happens to it (copied, "
                                     "renamed, transposed, squeezed, fused, tied, skipped), grouped by component; then "
                                     "the format, the config and where each value came from, the parameter count, "
                                     "dtype and bytes. Compiles nothing.")
    ins.add_argument("source", metavar="SOURCE", help=_SOURCE)
    _config_option(ins)
    ins.add_argument("--json", action="store_true", help="print the same as JSON, for scripts")
    ins.set_defaults(run=_run_inspect)

    conv = sub.add_parser("convert", help="write any checkpoint as a Hugging Face folder",
                          description="Write SOURCE as a Hugging Face folder (config.json, model.safetensors in "
                                      "save_pretrained's layout, the tokenizer files) that transformers' "
                                      "GPT2LMHeadModel.from_pretrained loads.")
    conv.add_argument("source", metavar="SOURCE", help=_SOURCE)
    conv.add_argument("output", metavar="OUTPUT_DIR", help="the folder to write (must not exist, or be empty)")
    _config_option(conv)
    conv.add_argument("--tokenizer", metavar="PATH", help="a folder whose tokenizer files to copy (default: SOURCE's)")
    conv.add_argument("--force", action="store_true", help="replace OUTPUT_DIR if it is not empty")
    conv.set_defaults(run=_run_convert)

    from max_gpt2 import bench  # only its options: the benchmark itself loads when it runs

    _own_command(sub, "bench", bench, "our engine against transformers and the CPU engines people compare, each in "
                 "its own process")

    ev = sub.add_parser("eval", help="perplexity on a text, by sliding windows as in transformers",
                        description="Perplexity of the model on FILE by transformers' fixed-length method: windows "
                                    "of --max-length tokens, a new one every --stride tokens, each scoring only the "
                                    "tokens the one before did not. Without FILE it scores English that ships with "
                                    "Python (the documentation topics of pydoc_data/topics.py).")
    _model_options(ev)
    ev.add_argument("file", nargs="?", metavar="FILE", help="a UTF-8 text file (default: Python's documentation topics)")
    ev.add_argument("--max-length", type=_whole_number, metavar="N",
                    help="tokens per window, at most the model's context (default: its n_positions)")
    ev.add_argument("--stride", type=_whole_number, metavar="N",
                    help="tokens from one window's start to the next's, at most --max-length; each token is scored "
                         "with at least max-length - stride tokens before it (default: half the window)")
    ev.add_argument("--max-tokens", type=_whole_number, metavar="N", help="score only the text's first N tokens")
    ev.add_argument("--against", choices=("float32",),
                    help="also load the checkpoint in float32 and report, on the same positions, the mean "
                         "KL(float32 || this model) and how often both rank the same token first")
    ev.add_argument("--json", action="store_true", help="print the results as JSON, for scripts")
    ev.set_defaults(run=_run_eval)

    from max_gpt2.serve import launch  # its options only: MAX Serve loads when the command runs

    _own_command(sub, "serve", launch, "serve GPT-2 over an OpenAI-compatible HTTP API (MAX Serve)")
    return p


def _own_command(sub, name: str, module, summary: str) -> None:
    """A command whose module has its own options (`add_arguments`), `run`, and help (its docstring)."""
    p = sub.add_parser(name, help=summary, description=module.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    module.add_arguments(p)
    p.set_defaults(run=module.run)


_SOURCE = ("a Hugging Face id (gpt2, gpt2-medium, gpt2-large, gpt2-xl, distilgpt2, a fine-tune), a local folder, "
           "a .safetensors / pytorch_model.bin, OpenAI's TensorFlow folder, an LLMs-from-scratch .pth, "
           "or a nanoGPT ckpt.pt")


def _model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="gpt2", metavar="ID_OR_PATH", help=_SOURCE + " (default: gpt2)")
    _config_option(p)
    p.add_argument("--tokenizer", metavar="PATH", help="a folder with tokenizer.json or vocab.json + merges.txt "
                                                       "(default: the checkpoint's own)")
    p.add_argument("--device", default="cpu", choices=("cpu", "gpu"), help="where to run (default: cpu)")
    add_precision_options(p)


def _config_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="PATH", help="a config.json for the weights, instead of the checkpoint's own "
                                                    "(needed when their heads are not 64 wide and no config travels with them)")


@contextlib.contextmanager
def assumptions_said(status):
    """A config value the loader had to assume (AssumedConfigWarning) becomes one progress line."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", AssumedConfigWarning)
        yield
    for w in caught:
        if issubclass(w.category, AssumedConfigWarning):
            status(str(w.message))
        else:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)


def _generation_options(p, *, temperature, top_k, top_p, max_new_tokens) -> None:
    # The ranges are checked by Sampling and check_max_new_tokens, as for the Python API.
    p.add_argument("--max-new-tokens", type=_whole_number, default=max_new_tokens, metavar="N",
                   help=f"tokens to generate per prompt, at most until the context is full (default: {max_new_tokens})")
    p.add_argument("--temperature", type=_number, default=temperature, metavar="T",
                   help=f"sampling temperature, >= 0; 0 is greedy (default: {temperature})")
    p.add_argument("--top-k", type=_whole_number, default=top_k, metavar="K",
                   help=f"sample among the K likeliest tokens; 0 turns it off (default: {top_k})")
    p.add_argument("--top-p", type=_number, default=top_p, metavar="P",
                   help=f"sample among the likeliest tokens holding mass P, 0 < P <= 1; 1 turns it off (default: {top_p})")
    p.add_argument("--seed", type=_whole_number, default=None, metavar="S",
                   help="make sampling reproducible, S >= 0 (default: a random seed)")
    p.add_argument("--greedy", action="store_true", help="always take the likeliest token (no sampling)")
    p.add_argument("--sliding-window", action="store_true",
                   help="at the context limit, keep the last half and go on instead of stopping")


def _whole_number(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None


def sampling_from(args):
    """The generation options as Sampling; a bad value raises here, before the model loads."""
    from max_gpt2.sampling import Sampling, check_max_new_tokens

    check_max_new_tokens(args.max_new_tokens)
    return Sampling(do_sample=not args.greedy, temperature=args.temperature, top_k=args.top_k,
                    top_p=args.top_p, seed=args.seed)


def load(args):
    """The model named by --model, with progress on stderr while it downloads and compiles."""
    from max_gpt2.engine import GPT2

    precision_from(args)
    status = Status()
    status(f"loading {args.model}")
    with assumptions_said(status):
        model = GPT2.from_pretrained(args.model, config=args.config, tokenizer=args.tokenizer, device=args.device,
                                     dtype=args.dtype, quantize=args.quantize, progress=status)
    status(f"loaded {model.describe()}")
    return model


def _run_chat(args) -> int:
    from max_gpt2.chat import chat

    sampling = sampling_from(args)
    return chat(load(args), sampling, args.max_new_tokens, sliding_window=args.sliding_window)


def _run_generate(args) -> int:
    sampling = sampling_from(args)
    if not args.prompt:
        raise GPT2Error("--prompt is empty: give some text to continue")
    model = load(args)
    model.require_tokenizer()
    model.compile(logits=False)  # before generating, with progress
    for piece in model.stream(args.prompt, args.max_new_tokens, sampling, sliding_window=args.sliding_window):
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    return 0


def _run_verify(args) -> int:
    from max_gpt2.verify import require_float32, verify

    require_float32(precision_from(args))  # before loading: it could only fail
    return verify(load(args))


def _run_eval(args) -> int:
    from max_gpt2.evaluate import run

    return run(args, load, _load_float32)


def _load_float32(args):
    """The same checkpoint with every precision option at float32, for `eval --against float32`."""
    return load(argparse.Namespace(**{**vars(args), "dtype": "float32", "quantize": None}))


def _run_inspect(args) -> int:
    from max_gpt2.inspection import describe, show

    with assumptions_said(Status()):
        info = describe(args.source, config=args.config)
    show(info, as_json=args.json)
    return 0


def _run_convert(args) -> int:
    from max_gpt2.convert import convert

    status = Status()
    with assumptions_said(status):
        convert(args.source, args.output, config=args.config, tokenizer=args.tokenizer, force=args.force, progress=status)
    return 0


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("max-gpt2")
    except PackageNotFoundError:
        return "unknown"


if __name__ == "__main__":
    sys.exit(main())
