"""The checkpoint formats GPT-2 is found in, one module each, and what they share.

Each format module has the same parts: `matches` (does this folder or these keys look like it),
`read` (the file's tensors, under their stored names), `config` (GPT-2's sizes from the file,
with where each value came from), and `plan` (pure: from stored names and layout to ours).

- huggingface: openai-community/gpt2's model.safetensors, save_pretrained's folder, a
  pytorch_model.bin (the layout our parameter names follow).
- openai_tf: OpenAI's original TensorFlow release folder, read without TensorFlow
  (the tensor bundle itself is read by tensor_bundle).
- llms_from_scratch: the `.pth` state dict of "Build a Large Language Model (From Scratch)".
- nanogpt: the `ckpt.pt` nanoGPT's train.py writes.
"""

FORMATS = {
    "huggingface": "Hugging Face (model.safetensors, pytorch_model.bin, a Hub id)",
    "openai_tf": "OpenAI's TensorFlow release (hparams.json + model.ckpt.*)",
    "llms_from_scratch": "LLMs-from-scratch GPTModel state dict (.pth)",
    "nanogpt": "nanoGPT's ckpt.pt",
}


def formats_we_read() -> str:
    """One phrase naming every format, for the error that refuses anything else."""
    return "; ".join(FORMATS.values())
