"""qwen-vl-utils (its `vision_process`) importable on a CPU machine without torchvision or a video
decoder: stand-ins for torchvision (a resize to the size asked for), decord (a decoder over
videos of a given frame count, fps and size, kept in VIDEOS) and requests. Used by the tests that
check a family's video worst case against qwen-vl-utils' own code. qwen-vl-utils itself is not a
dependency: the `vision_process` fixture (conftest.py) skips without it
(`pip install --no-deps qwen-vl-utils`)."""

import importlib.util
import types

import numpy as np
import torch

VIDEOS = {}  # a video file's text -> (frames, fps, height, width): what the stand-in decoder holds


class _VideoReader:
    """decord.VideoReader's interface over a video of VIDEOS[the file's text] (black frames); given
    a path, or the file's bytes (ms-swift's patched reader loads the file first)."""

    def __init__(self, source):
        key = source.read().decode() if hasattr(source, "read") else open(source).read()
        self.frames, self.fps, self.height, self.width = VIDEOS[key]

    def __len__(self):
        return self.frames

    def get_avg_fps(self):
        return self.fps

    def get_batch(self, indices):
        frames = np.zeros((len(indices), self.height, self.width, 3), dtype=np.uint8)
        return types.SimpleNamespace(asnumpy=lambda: frames)


def _module(name, **attributes):
    module = types.ModuleType(name)
    module.__spec__ = importlib.machinery.ModuleSpec(name, None)
    module.__dict__.update(attributes)
    return module


def stand_ins() -> dict:
    """Modules qwen-vl-utils imports that cannot load here: torchvision (its resize of the frames'
    values: a nearest-neighbour interpolation to the size asked for), decord (the decoder), requests."""
    def resize(video, size, interpolation=None, antialias=True):
        return torch.nn.functional.interpolate(video.float(), size=tuple(size))

    functional = _module("torchvision.transforms.functional", resize=resize)
    transforms = _module("torchvision.transforms", functional=functional, InterpolationMode=types.SimpleNamespace(BICUBIC="bicubic"))
    io = _module("torchvision.io")
    modules = {"torchvision": _module("torchvision", __version__="0.0+stand-in", io=io, transforms=transforms),
               "torchvision.io": io, "torchvision.transforms": transforms, "torchvision.transforms.functional": functional,
               "decord": _module("decord", VideoReader=_VideoReader)}
    if importlib.util.find_spec("requests") is None:
        modules["requests"] = _module("requests")
    return modules
