"""A tokenizer for the worst-case text TRL's trainers tokenize (issue #12), built with the
`tokenizers` library at the model's vocabulary size: one word per token id, so a prompt of N
words is exactly N tokens, and whatever ids a model samples decode to words that encode back to
the same ids. Memory depends on how many tokens there are, not which, so the model's own
tokenizer (often not on disk when probing from config.json alone) is not needed.

Id 0 is padding, id 1 end of sequence; words never share a prefix with them (a special token
would otherwise be split out of a word that starts with it)."""

from __future__ import annotations

import functools

PAD, EOS = "<pad>", "<eos>"
FIRST_WORD = 2  # ids below are the special tokens


def word(token_id: int) -> str:
    return f"w{token_id}"


def text_of(ids) -> str:
    return " ".join(word(i) for i in ids)


@functools.lru_cache(maxsize=4)
def synthetic_tokenizer(vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {PAD: 0, EOS: 1, **{word(i): i for i in range(FIRST_WORD, vocab_size)}}
    core = Tokenizer(models.WordLevel(vocab, unk_token=PAD))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, unk_token=PAD, pad_token=PAD, eos_token=EOS)
    tokenizer.padding_side = "left"  # TRL left-pads prompts for generation
    return tokenizer
