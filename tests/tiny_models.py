"""Tiny random-weight causal LMs built with the real transformers classes (no fake code paths), and a tokenizer."""

from __future__ import annotations

from pathlib import Path

import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedModel, PreTrainedTokenizerFast

from specdec.loading import LoadedModel

VOCAB = 320
FAMILIES = ("llama", "gpt2", "qwen2", "gpt_neox")
MORE_FAMILIES = (*FAMILIES, "opt", "phi")  # every architecture the drafters are checked on
CORPUS = [
    "def parse_args(argv):\n    parser = argparse.ArgumentParser()\n    return parser.parse_args(argv)\n",
    "for index, value in enumerate(values):\n    if value is None:\n        continue\n    total += value\n",
    "class Config:\n    def __init__(self, name, size=4):\n        self.name = name\n        self.size = size\n",
    "import os\nimport sys\n\nprint(os.path.join(sys.prefix, 'lib'))\n",
]


def make_config(family: str, layers: int = 2, vocab: int = VOCAB, hidden: int = 64) -> transformers.PretrainedConfig:
    """A small config of a real architecture. Larger init than usual so that logits are peaked and varied."""
    shared = {"vocab_size": vocab, "initializer_range": 0.3, "bos_token_id": 1, "eos_token_id": 2}
    if family == "llama":
        return transformers.LlamaConfig(
            hidden_size=hidden,
            intermediate_size=2 * hidden,
            num_hidden_layers=layers,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=512,
            **shared,
        )
    if family == "gpt2":
        return transformers.GPT2Config(n_embd=hidden, n_layer=layers, n_head=4, n_positions=512, **shared)
    if family == "qwen2":
        return transformers.Qwen2Config(
            hidden_size=hidden,
            intermediate_size=2 * hidden,
            num_hidden_layers=layers,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=512,
            **shared,
        )
    if family == "gpt_neox":
        return transformers.GPTNeoXConfig(
            hidden_size=hidden,
            intermediate_size=2 * hidden,
            num_hidden_layers=layers,
            num_attention_heads=4,
            max_position_embeddings=512,
            **shared,
        )
    if family == "opt":
        return transformers.OPTConfig(
            hidden_size=hidden,
            ffn_dim=2 * hidden,
            num_hidden_layers=layers,
            num_attention_heads=4,
            max_position_embeddings=512,
            word_embed_proj_dim=hidden,
            **{**shared, "pad_token_id": 0},
        )
    if family == "phi":
        return transformers.PhiConfig(
            hidden_size=hidden,
            intermediate_size=2 * hidden,
            num_hidden_layers=layers,
            num_attention_heads=4,
            max_position_embeddings=512,
            **shared,
        )
    raise ValueError(family)


def make_model(family: str, seed: int, layers: int = 2, vocab: int = VOCAB) -> PreTrainedModel:
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(make_config(family, layers, vocab), dtype=torch.float32)
    return model.eval()


def make_wide_llama(seed: int) -> PreTrainedModel:
    """One Llama layer at the Llama-3.1-8B shape's widths (hidden 4096, 32 heads of 128, 8 kv heads) with a small MLP
    and vocabulary (47M parameters): the one-token kernels' wide tiles run on it."""
    config = transformers.LlamaConfig(
        hidden_size=4096, intermediate_size=128, num_hidden_layers=1, num_attention_heads=32, num_key_value_heads=8,
        max_position_embeddings=128, vocab_size=VOCAB, initializer_range=0.05, bos_token_id=1, eos_token_id=2,
    )  # fmt: skip
    torch.manual_seed(seed)
    return transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()


def make_tokenizer(vocab: int = VOCAB) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on a few lines of code (ids 0..2 are <pad>, <s>, </s>)."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab,
        special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(CORPUS * 4, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", bos_token="<s>", eos_token="</s>")


def loaded(model: PreTrainedModel, name: str, tokenizer: PreTrainedTokenizerFast | None = None) -> LoadedModel:
    return LoadedModel(
        name=name,
        model=model,
        tokenizer=tokenizer,
        device=torch.device("cpu"),
        dtype=torch.float32,
        source="local",
    )


def save(model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast, folder: Path) -> Path:
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
