"""The zoo's tokenizer: a byte-level BPE trained by the recipe on the training split of the corpus.

Byte-level means every string encodes (no unknown token) and decodes back exactly. The one special token,
``<|endoftext|>``, separates files in the training stream and serves as BOS, EOS and padding.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

END_OF_TEXT = "<|endoftext|>"


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> Tokenizer:
    """Train a byte-level BPE of ``vocab_size`` tokens (256 bytes + merges + ``END_OF_TEXT``)."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[END_OF_TEXT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return tokenizer


# The zoo's code models know no chat format; this template renders a conversation as Python comments, then opens
# the assistant's turn, so that /v1/chat/completions can serve them (the answer continues as code or comment).
CHAT_TEMPLATE = (
    "{% for message in messages %}# {{ message['role'] }}: {{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}# assistant:\n{% endif %}"
)


def wrap_tokenizer(tokenizer: Tokenizer) -> PreTrainedTokenizerFast:
    """The Hugging Face tokenizer object around a trained ``tokenizers.Tokenizer`` (what ``save_pretrained`` writes)."""
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=END_OF_TEXT,
        eos_token=END_OF_TEXT,
        pad_token=END_OF_TEXT,
        model_max_length=2048,
        clean_up_tokenization_spaces=False,
        chat_template=CHAT_TEMPLATE,
    )


def load_zoo_tokenizer(folder: Path) -> PreTrainedTokenizerFast:
    """Load a tokenizer that ``wrap_tokenizer(...).save_pretrained(folder)`` wrote, without ``AutoTokenizer``."""
    return wrap_tokenizer(Tokenizer.from_file(str(folder / "tokenizer.json")))


def end_of_text_id(tokenizer: PreTrainedTokenizerFast) -> int:
    """The id of ``END_OF_TEXT`` (BOS, EOS and padding)."""
    token_id = tokenizer.convert_tokens_to_ids(END_OF_TEXT)
    assert isinstance(token_id, int)
    return token_id
