"""A tokenizer for the worst-case text TRL's trainers tokenize (issue #12), built with the
`tokenizers` library at the model's vocabulary size: one word per token id, so a prompt of N
words is exactly N tokens, and whatever ids a model samples decode to words that encode back to
the same ids. Memory depends on how many tokens there are, not which, so the model's own
tokenizer (often not on disk when probing from config.json alone) is not needed.

Id 0 is padding, id 1 end of sequence; words never share a prefix with them (a special token
would otherwise be split out of a word that starts with it). A vision-language model's
placeholder tokens (`specials`: name -> the config's id, e.g. `<|image_pad|>` -> image_token_id)
take the place of the words at those ids, as special tokens: the processor expands them in the
text and the model counts them in the ids. `chat_template`: for a caller that renders conversations
with the tokenizer alone (a reward model's, trials/rlhf_data.py)."""

from __future__ import annotations

import functools

PAD, EOS = "<pad>", "<eos>"
FIRST_WORD = 2  # ids below are the special tokens


def word(token_id: int) -> str:
    return f"w{token_id}"


def text_of(ids) -> str:
    return " ".join(word(i) for i in ids)


def random_ids(rng, vocab_size: int, n: int, avoid=frozenset()) -> list[int]:
    """`n` word ids, none of them in `avoid` (a placeholder id in the text would make the model
    count one image token too many)."""
    ids = []
    while len(ids) < n:
        token = rng.randrange(FIRST_WORD, vocab_size)
        if token not in avoid:
            ids.append(token)
    return ids


@functools.lru_cache(maxsize=4)
def synthetic_tokenizer(vocab_size: int, specials: tuple[tuple[str, int], ...] = (), chat_template: str | None = None):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    named = dict(specials)
    taken = set(named.values())
    vocab = {PAD: 0, EOS: 1, **{word(i): i for i in range(FIRST_WORD, vocab_size) if i not in taken}, **named}
    core = Tokenizer(models.WordLevel(vocab, unk_token=PAD))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, unk_token=PAD, pad_token=PAD, eos_token=EOS)
    if named:
        # Special: matched inside a word (the processor writes them with no spaces between).
        tokenizer.add_special_tokens({"additional_special_tokens": list(named)})
    tokenizer.padding_side = "left"  # TRL left-pads prompts for generation
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    return tokenizer
