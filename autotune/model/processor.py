"""A vision-language model's processor for TRL's image path (issue #12), built with no
downloads: the model's own processor class from transformers, with the word-per-id tokenizer
(model/tokenizer.py, the config's placeholder tokens at their ids) and the family's image
processor made from the config and the worst-case limits (model/families/).

What TRL 1.16 needs of `processing_class` for images (read from its trainers): a
`ProcessorMixin` (that is how GRPOTrainer and DPOTrainer tell a vision-language model: `_is_vlm`)
with a `tokenizer`; `apply_chat_template` on conversational prompts whose content holds image
blocks (GRPO renders text with it, then calls the processor with `images=` and `text=`, which
expands each image placeholder to the image's tokens and returns `pixel_values`,
`image_grid_thw` and `mm_token_type_ids`; DPO's `DataCollatorForVisionPreference` does the same
per batch); `batch_decode` for the completions.

No video processor. transformers 5's video processors need torchvision, and the processor
classes check each sub-processor's class, so the Qwen2-VL family's processor cannot be built
without one (it fails on the class lookup, even for None). TRL's RLHF data carries images, not
video, so the processor is the model's class with its sub-processors narrowed to the image
processor and the tokenizer (`images_only`); the image processors used are the PIL ones, which
import without torchvision. The chat template renders only the messages' content (each image
as the family's placeholder text), so a prompt's length in tokens is exact."""

from __future__ import annotations

import functools
from dataclasses import dataclass


@dataclass(frozen=True)
class Processing:
    """What an RLHF trial needs for a vision-language model's images: the processor TRL is given,
    the worst-case image's size in pixels (a fixed point of the family's resize rule, so the
    processor makes exactly the planned grid), and the token ids random text must avoid."""

    processor: object
    image_size: tuple[int, int]  # (width, height)
    placeholder_ids: frozenset

    def images(self, count: int) -> list:
        """`count` worst-case images (the pixels' values do not change the memory)."""
        return [_image(self.image_size)] * count


@functools.lru_cache(maxsize=2)
def _image(size: tuple[int, int]):
    from PIL import Image

    return Image.new("RGB", size, (127, 127, 127))


def images_only(processor_cls):
    """`processor_cls` with only an image processor and a tokenizer (see the module docstring)."""
    return type(f"{processor_cls.__name__}ImagesOnly", (processor_cls,),
                {"get_attributes": classmethod(lambda cls: ["image_processor", "tokenizer"]), "__module__": __name__})


def chat_template(image_text: str) -> str:
    """A chat template that writes each message's content and nothing else: text as it is, each
    image block as `image_text` (the family's placeholder the processor expands), a space after
    each message (so a prompt renders as a prefix of prompt + response, which TRL's DPO needs)."""
    return ("{% for message in messages %}{% if message['content'] is string %}{{ message['content'] }}"
            "{% else %}{% for part in message['content'] %}{% if part['type'] == 'image' %}" + image_text +
            "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}{{ ' ' }}{% endfor %}")
