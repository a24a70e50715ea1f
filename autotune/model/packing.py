"""Packed rows (issue #15: ms-swift `packing`): rows of max_length tokens holding several samples,
told apart by `position_ids` that restart at every sample and no attention mask, which
transformers' masking turns into a block-diagonal causal mask (`find_packed_sequence_indices`).

The worst case of a packed row differs by modality:
- text: the row's length is all that matters (the language model sees max_length tokens however
  many samples share them), so a row holds two samples;
- vision-language: the media do not shrink with the text. A packer fills a row with as many
  samples as fit, and samples of little text beside their media (a short caption) put the most
  media into one row: `samples_per_row` = the row's length over one sample's media tokens plus
  `TEXT_PER_SAMPLE`. The row is that many worst-case samples, each the family's own input at
  that length (the media at the user's limits), the last taking the rest of the row's text, so
  the vision tower sees `samples_per_row` times a sample's media per row.
Multimodal-RoPE families (Qwen2-VL, Qwen2.5-VL, Qwen3-VL, Qwen2.5-Omni) take 4-row position ids
for packed rows (text positions first, the mask is built from them; transformers' own note in
Qwen2-VL's forward): the rope rows here restart with the text's, which costs the same memory as
the rope values a collator computes per sample (rotary embedding is elementwise in them).
Padding-free rows (the whole batch as one row) are built for text only; a vision-language one
needs flash attention's varlen kernels, which no CPU runs."""

from __future__ import annotations

import torch

TEXT_PER_SAMPLE = 16  # text tokens beside each packed sample's media: a short caption or answer
SEQUENCE_KEYS = ("input_ids", "labels", "attention_mask", "mm_token_type_ids", "token_type_ids")


def text_rows(input_ids: torch.Tensor, samples: int = 2) -> dict:
    """Text rows of max_length tokens, each `samples` samples: positions restart, no mask."""
    batch, length = input_ids.shape
    part = max(1, length // samples)
    positions = (torch.arange(length, device=input_ids.device) % part).expand(batch, length)
    return {"input_ids": input_ids, "position_ids": positions.contiguous(), "labels": input_ids}


def samples_per_row(vplan, length: int) -> int:
    """How many samples at the media limits one packed row of `length` tokens holds."""
    return max(1, length // (vplan.tokens + TEXT_PER_SAMPLE))


def segment_lengths(vplan, length: int) -> list[int]:
    """Each packed sample's tokens: its media and a short text; the last one takes the rest."""
    k = samples_per_row(vplan, length)
    if k == 1:
        return [length]
    each = vplan.tokens + TEXT_PER_SAMPLE
    return [each] * (k - 1) + [length - each * (k - 1)]


def vision_rows(family, config, vplan, batch_size: int, length: int, device, mrope: bool) -> dict:
    """`batch_size` packed rows of `length` tokens (see the module's note). Every row is alike, so
    one is built and repeated: per-item tensors (pixel values, grids) row after row, as a
    collator concatenates them."""
    segments = segment_lengths(vplan, length)
    parts = [family.inputs(config, vplan, 1, n, device) for n in segments]
    row: dict = {}
    for key, first in parts[0].items():
        values = [p[key] for p in parts]
        if not isinstance(first, torch.Tensor):
            if any(v != first for v in values):
                raise ValueError(f"packed samples disagree on {key}: {values}")
            row[key] = first
        elif key in SEQUENCE_KEYS:
            row[key] = torch.cat(values, dim=1)
        else:
            row[key] = torch.cat(values, dim=0)
    row.pop("attention_mask", None)  # a packed row is masked from its position ids
    text = torch.cat([torch.arange(n, device=device) for n in segments])
    batch = {key: (value.repeat(batch_size, *([1] * (value.dim() - 1))) if key in SEQUENCE_KEYS
                   else torch.cat([value] * batch_size) if isinstance(value, torch.Tensor) else value)
             for key, value in row.items()}
    positions = text.expand(batch_size, length)
    batch["position_ids"] = (positions.expand(4, batch_size, length) if mrope else positions).contiguous()
    # The Trainer switches the cache off in the top config only; a vision-language model's language
    # model reads its own (text) config, builds a cache, and with a cache transformers builds a
    # plain causal mask, not the packed one. Told here, every family masks each sample from the rest.
    batch["use_cache"] = False
    return batch


def uses_mrope(config) -> bool:
    """A multimodal-RoPE text model (3 rope rows: time, height, width)."""
    for cfg in (getattr(config, "text_config", None), config, getattr(getattr(config, "thinker_config", None), "text_config", None)):
        for name in ("rope_scaling", "rope_parameters"):
            rope = getattr(cfg, name, None) if cfg is not None else None
            if isinstance(rope, dict) and rope.get("mrope_section"):
                return True
    return False
