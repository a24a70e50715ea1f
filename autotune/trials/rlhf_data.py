"""The worst-case data an RLHF trial hands TRL's trainers (issue #12), at exact lengths: what
TRL is given as its `processing_class`, GRPO's prompts, DPO's pairs, and what a stub rollout
engine hands back (TRL's `rollout_func`). trials/rlhf_run.py builds the trainers with them.

Text models: plain-text prompts of word-per-id tokens (model/tokenizer.py), N words = N tokens.

Vision-language models (Qwen2-VL, Qwen2.5-VL): TRL's image path needs the model's processor,
built here without downloads (model/processor.py, the family's image processor at the worst
case's limits). Prompts are conversational (TRL requires that with images) and carry the
family's worst-case images at `--max-pixels` (model/multimodal.py, as the supervised probe
uses them), `--images-per-sample` per prompt; the text fills the rest of `--max-length`, so a
prompt is exactly max_length tokens with its image tokens. No word is a placeholder id.

How the images reach the loss (TRL 1.16, grpo_trainer.py `_generate_and_score_completions`):
the dataset's `images` are put into the prompts' first user message; with a `rollout_func`,
TRL keeps the dataset's images for the forward (the function returns ids only) and builds the
forward's `pixel_values`, `image_grid_thw` and `mm_token_type_ids` by calling the processor on
the rendered prompts and the images, beside the rollout's `prompt_ids`. So the stub engine must
return prompt ids with each image placeholder expanded exactly as the processor expands it (the
model checks the count against the image features), which it gets from the processor's own
`apply_chat_template` (TRL: "chat templating must happen inside rollout_func"), on the host as
an engine tokenizes; its completions avoid the placeholder ids. DPO's vision collator
(`DataCollatorForVisionPreference`) calls the processor per batch inside the DataLoader; the
trial runs it inside the device's `host()`, as trials/trainer_run.py's collator runs, so only the
Trainer's copy to the card counts.

What a reward model passed as a model reads (TRL 1.16 `_calculate_rewards`): text alone, tokenized
by its `reward_processing_class` with `text=` only, so it never sees the images. Text prompts:
prompt + completion joined as strings. Conversational prompts (a vision-language policy's, the
images put into them as content blocks): prompt + completion rendered by that tokenizer's chat
template, which writes for an image block whatever it writes (no pixels; ms-swift's text reward
templates write the text `<image>`); the trials' template writes the text and no image.
`reward_tokens` is what it reads."""

from __future__ import annotations

import contextlib

from ..model.processor import chat_template
from ..model.tokenizer import random_ids, synthetic_tokenizer, text_of


def reward_tokens(workload) -> int:
    """The tokens a reward model passed as a model reads per completion in a GRPO trial: the
    prompt's (of a vision-language prompt, its text: the images are not its to read) and the
    completion's."""
    spec, setup = workload.spec, workload.setup
    images = setup.vision.tokens if setup is not None and setup.family is not None else 0
    return spec.max_length - images + spec.rlhf.completion_length


def vision_processing(workload):
    """The processor and worst-case images of a vision-language policy (model/processor.py), at
    the trial's worst case; None for a text model."""
    setup = workload.setup
    if setup is None or setup.family is None:
        return None
    return setup.family.processor(workload.source.config, setup.vision)


class TrialData:
    """The processing class TRL gets and the worst-case samples, for one trial."""

    def __init__(self, workload, rng):
        self.rng, self.vocab, self.device = rng, workload.vocab_size, workload.device
        self.media = vision_processing(workload)
        if self.media is None:
            self.processing_class, self.avoid, self.images, self.vision_tokens = synthetic_tokenizer(self.vocab), frozenset(), 0, 0
        else:
            vision = workload.setup.vision
            self.processing_class, self.avoid = self.media.processor, self.media.placeholder_ids
            self.images, self.vision_tokens = vision.images, vision.tokens

    def reward_processing_class(self, vocab_size: int):
        """A reward model's tokenizer (TRL's `reward_processing_classes`), at its vocabulary; with a
        chat template of the messages' text where the prompts are conversational."""
        return synthetic_tokenizer(vocab_size, chat_template=None if self.media is None else chat_template(""))

    def ids(self, n: int) -> list[int]:
        return random_ids(self.rng, self.vocab, n, self.avoid)

    def _words(self, n: int) -> str:
        return text_of(self.ids(n))

    # ------------------------------------------------------------ GRPO

    def prompts(self, n: int, length: int) -> dict:
        """Columns of `n` prompts of `length` tokens each, their images' tokens included."""
        if self.media is None:
            # A reward model passed as a model reads `prompt + completion`, joined as strings (TRL's
            # `_calculate_rewards`): the trailing space keeps the last prompt word and the first
            # completion word apart, so it reads prompt + completion tokens, as a real text would.
            return {"prompt": [self._words(length) + " " for _ in range(n)]}
        return {"prompt": [[{"role": "user", "content": self._words(length - self.vision_tokens)}] for _ in range(n)],
                "images": [self.media.images(self.images) for _ in range(n)]}

    def rollout(self, completion: int, reserve: int):
        """What an external engine hands TRL (its `rollout_func`): the prompts' ids as the processing
        class tokenizes them and completions at full length. Holds `reserve` more bytes of the card
        while it generates (an engine that sleeps while the trainer trains wakes up to its whole
        share for this)."""
        device = self.device

        def rollout(prompts, trainer):
            held = device.reserved(reserve) if reserve > 0 else contextlib.nullcontext()
            with held, device.host():
                prompt_ids = self._prompt_ids(list(prompts))
                completions = [self.ids(completion) for _ in prompts]
            return {"prompt_ids": prompt_ids, "completion_ids": completions, "logprobs": None}

        return rollout

    def _prompt_ids(self, prompts: list) -> list:
        if self.media is None:
            return self.processing_class(text=prompts)["input_ids"]
        return self.processing_class.apply_chat_template(conversation=prompts, add_generation_prompt=True, tokenize=True,
                                                         return_dict=True)["input_ids"]

    # ------------------------------------------------------------ DPO

    def pairs(self, n: int, max_length: int) -> dict:
        """Columns of `n` preference pairs, prompt + chosen and prompt + rejected `max_length`
        tokens each: the prompt half of it (or its images and one word, where they take more)."""
        prompt = max(max_length // 2, self.vision_tokens + 1) if self.media is not None else max_length // 2
        response = max_length - prompt
        if self.media is None:  # the prompt ends on a space: TRL joins prompt + chosen as strings, and words must not fuse
            return {"prompt": [self._words(prompt) + " " for _ in range(n)], "chosen": [self._words(response) for _ in range(n)],
                    "rejected": [self._words(response) for _ in range(n)]}

        def said(role: str, words: int) -> list:
            return [{"role": role, "content": self._words(words)}]

        return {"prompt": [said("user", prompt - self.vision_tokens) for _ in range(n)],
                "chosen": [said("assistant", response) for _ in range(n)],
                "rejected": [said("assistant", response) for _ in range(n)],
                "images": [self.media.images(self.images) for _ in range(n)]}

    def collate_on_host(self, trainer) -> None:
        """TRL's vision collator builds each batch on the host, as a DataLoader does."""
        if self.media is not None:
            trainer.data_collator = _OnHost(trainer.data_collator, self.device)


class _OnHost:
    def __init__(self, collator, device):
        self.collator, self.device = collator, device

    def __call__(self, examples):
        with self.device.host():
            return self.collator(examples)
