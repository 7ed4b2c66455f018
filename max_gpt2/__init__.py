"""OpenAI's GPT-2 as a compiled Modular MAX graph.

    from max_gpt2 import GPT2
    model = GPT2.from_pretrained("gpt2")            # a Hub id, a folder, a file, or a state dict
    logits = model.logits([[15496, 995]])           # numpy float32 [batch, seq, vocab]
    print(model.generate("Hello, I'm a language model,", max_new_tokens=30))
"""

from max_gpt2.config import GPT2Config
from max_gpt2.engine import GPT2
from max_gpt2.text import Generated, Stats
from max_gpt2.errors import GPT2Error
from max_gpt2.sampling import Sampling
from max_gpt2.tokenizer import GPT2Tokenizer

__all__ = ["GPT2", "GPT2Config", "GPT2Error", "GPT2Tokenizer", "Generated", "Sampling", "Stats"]
