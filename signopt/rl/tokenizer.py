"""A character-level tokenizer (one token per printable ASCII character) as a standard
``PreTrainedTokenizerFast``: it works with ``generate``, ``save_pretrained`` and
``AutoTokenizer.from_pretrained`` without custom code."""

from __future__ import annotations

import string

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS = ("<pad>", "<eos>", "<unk>")
CHARACTERS = string.digits + string.ascii_letters + string.punctuation + " "


def char_tokenizer(characters: str = CHARACTERS) -> PreTrainedTokenizerFast:
    """Tokenizer with ids 0, 1, 2 = pad, eos, unk, then one id per character; left padding."""
    if len(set(characters)) != len(characters):
        raise ValueError("characters must not repeat")
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + tuple(characters))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>", padding_side="left"
    )
