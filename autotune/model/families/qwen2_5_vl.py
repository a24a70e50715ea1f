"""Qwen2.5-VL: Qwen2-VL's input rules (14-pixel patches merged 2x2, temporal patch 2) with a
windowed-attention ViT; the tower pads its own windows, so any grid the processor makes works."""

from .qwen2_vl import family

FAMILY = family("qwen2.5-vl", "qwen2_5_vl", "Qwen2_5_VLForConditionalGeneration", processor_class="Qwen2_5_VLProcessor")
