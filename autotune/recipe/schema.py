"""The recipe: the probe's result as data. YAML on disk, written atomically; loads back into
the same dataclasses. `settings` uses Hugging Face TrainingArguments names."""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import tempfile
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..errors import UsageError

SCHEMA = 1
# settings.strategy: the sharding engines a probe runs and the launch files configure.
STRATEGIES = ("ddp", "fsdp", "zero2", "zero3", "zero2_offload", "zero3_offload")


@dataclass
class TrialResult:
    phase: str  # "train" | "eval" | "validate"
    settings: dict  # full settings: any trial can be re-run from the recipe alone
    outcome: str  # "fit" | "oom" | "over_budget" | "error" | "skipped" | "timeout" | "crashed"
    peak_bytes: int | None = None
    step_time_s: float | None = None
    tokens_per_s: float | None = None
    steps: int = 0
    wall_s: float = 0.0
    message: str | None = None
    leaked_bytes: int | None = None
    memory_stats: dict | None = None
    purpose: str | None = None  # "frontier" | "throughput" (issue #3); None: a frontier trial
    # (slowest - fastest) / median of the timed steps: the trial's own timing noise (issue #13)
    step_time_spread: float | None = None

    @property
    def batch_size(self) -> int:
        key = "per_device_eval_batch_size" if self.phase == "eval" else "per_device_train_batch_size"
        return int(self.settings[key])

    @property
    def fits(self) -> bool:
        return self.outcome == "fit"


@dataclass
class ModelInfo:
    source: str  # "weights" | "config" | "builtin"
    path: str
    model_type: str
    architecture: str
    dtype: str
    train_type: str
    num_parameters: int
    trainable_parameters: int
    max_length: int
    lora: dict | None = None
    quantization: dict | None = None  # qlora: {method: bnb, bits: 4, quant_type: nf4, double_quant, compute_dtype}
    hidden_size: int | None = None  # fills DeepSpeed's hidden-size "auto" entries (emit/deepspeed.py)


@dataclass
class Hardware:
    device: str  # "cuda" | "sim"
    name: str
    capacity_bytes: int
    device_count: int
    world_size: int
    torch: str
    transformers: str
    peft: str
    python: str = field(default_factory=platform.python_version)

    def fingerprint(self) -> dict:
        """What must match for a recipe to be trusted elsewhere."""
        return {k: getattr(self, k) for k in ("device", "name", "capacity_bytes", "device_count", "world_size", "torch", "transformers", "peft")}


@dataclass
class Settings:
    per_device_train_batch_size: int
    gradient_accumulation_steps: int = 1
    per_device_eval_batch_size: int | None = None
    eval_accumulation_steps: int | None = None
    prediction_loss_only: bool | None = None
    # What the eval phase keeps, as the launched trainer does: loss | logits | argmax | generate
    # (training_args.EVAL_OUTPUTS). None: an older recipe (prediction_loss_only says it).
    eval_outputs: str | None = None
    max_new_tokens: int | None = None  # eval_outputs "generate": tokens generated per sample
    # The trials switched `use_cache` off in the language model's sub-configs too, as ms-swift does
    # (true), or in the top config only, as the HF Trainer does (false; None: an older recipe, the
    # same): under the HF Trainer a vision-language model's evaluation builds a KV cache.
    use_cache_off_in_sub_configs: bool | None = None
    gradient_checkpointing: bool = False
    attn_implementation: str = "sdpa"
    # Memory levers (issue #15, autotune/recipe/levers.py); the defaults are "not used".
    checkpoint_every_n_layers: int | None = None  # checkpointing every N-th layer (transformers' every_n_layers)
    activation_offloading: bool = False  # the checkpointed layers' inputs in host memory (transformers' offload)
    packing: bool = False  # rows of max_length tokens holding several samples (ms-swift packing)
    padding_free: bool = False  # the batch flattened into one row (ms-swift padding_free; flash attention)
    use_liger_kernel: bool = False  # Liger kernels (the Trainer's and ms-swift's use_liger_kernel)
    sequence_parallel_size: int | None = None  # ms-swift's sequence parallelism (not measured here)
    torch_dtype: str = "bfloat16"
    # The Trainer's mixed precision as the trials ran and the launch files set it: bf16 | fp16 | no.
    # None: an older recipe (it follows torch_dtype).
    mixed_precision: str | None = None
    max_length: int | None = None
    optim: str = "adamw_torch_fused"
    # Vision-language (issue #5); ms-swift names. None: not a vision-language recipe / not set.
    freeze_vit: bool | None = None
    freeze_aligner: bool | None = None
    freeze_llm: bool | None = None
    vit_gradient_checkpointing: bool | None = None
    max_pixels: int | None = None
    video_max_pixels: int | None = None
    video_min_pixels: int | None = None
    video_frames: int | None = None
    use_audio_in_video: bool | None = None  # Qwen2.5-Omni: each video's sound track too (ms-swift's USE_AUDIO_IN_VIDEO)
    # The rule that sized a Qwen-VL image (spec.IMAGE_RULES): "processor" | "qwen-vl-utils". Not an
    # ms-swift argument: what the launch does. None: not set (an older recipe: the largest grid, qwen-vl-utils').
    image_resize: str | None = None
    # Sharding (issue #6): "ddp" | "zero2" | "zero3" | "zero2_offload" | "zero3_offload" | "fsdp"; None: single device.
    strategy: str | None = None
    env: dict = field(default_factory=dict)  # environment the launch needs (PYTORCH_CUDA_ALLOC_CONF, MAX_PIXELS, ...)
    task: str | None = None  # "eval": an evaluation-only recipe (issue #14: Trainer.evaluate, no training); None: training
    # RLHF (issue #12), ms-swift's names; None: not an RLHF recipe. GRPO's per-device batch counts
    # completions, and max_length is the prompt's; DPO's max_length is prompt + response.
    rlhf_type: str | None = None  # "grpo" | "dpo"
    num_generations: int | None = None  # GRPO: completions per prompt
    max_completion_length: int | None = None  # GRPO: tokens per completion
    beta: float | None = None  # GRPO's KL coefficient / DPO's beta, as the run uses it
    use_vllm: bool | None = None
    vllm_mode: str | None = None  # "colocate" | "server"
    vllm_gpu_memory_utilization: float | None = None
    sleep_level: int | None = None  # ms-swift: 0 none; 1, 2: vLLM releases its memory while the trainer trains
    offload_model: bool | None = None
    offload_optimizer: bool | None = None
    steps_per_generation: int | None = None  # GRPO; TRL's default is gradient_accumulation_steps
    precompute_ref_log_probs: bool | None = None  # DPO
    reward_model: list[str] | None = None  # GRPO: reward models passed as models (ms-swift's reward_model)


@dataclass
class SearchRecord:
    margin: float
    capacity_bytes: int
    budget_bytes: int
    max_batch_size: int
    steps_per_trial: int
    frontier: dict  # phase -> largest batch that fits, e.g. {"train": 7}
    global_batch_size: int | None = None
    effective_global_batch_size: int | None = None
    global_batch_exact: bool = True
    global_batch_note: str | None = None
    trials: list[TrialResult] = field(default_factory=list)
    wall_s: float = 0.0
    # Issue #3: one row per (attention, checkpointing) candidate -- status searched/skipped/pruned,
    # reason, frontier, measured throughput and peak -- and trials/wall time per phase.
    candidates: list[dict] = field(default_factory=list)
    phases: dict = field(default_factory=dict)
    # Issue #14: the limit searched instead of the batch (`frontier` then holds it, e.g.
    # {"max_length": 1536}): the values searched, the proof (a fit and the next value's non-fit,
    # or None when the largest value fits), and each candidate's frontier.
    sequence: dict | None = None
    # Issue #15: the levers asked for (status, reason) and, when the chosen configuration uses one,
    # how much faster it is than the best configuration without levers. Empty: no lever flag given.
    levers: dict = field(default_factory=dict)


@dataclass
class Validation:
    passed: bool
    method: str  # how it was validated, e.g. "search-trial" (the chosen batch ran in the search)
    steps: int = 0
    peak_bytes: int | None = None
    headroom_bytes: int | None = None
    headroom_pct: float | None = None
    tokens_per_s: float | None = None
    message: str | None = None
    # Issue #3 ("validation-run"): the eval part of the run, and every configuration tried in turn.
    eval_steps: int = 0
    eval_peak_bytes: int | None = None
    attempts: list[dict] = field(default_factory=list)


@dataclass
class Recipe:
    schema: int
    model: ModelInfo
    hardware: Hardware
    settings: Settings
    search: SearchRecord
    validation: Validation
    created: str = ""
    autotune_version: str = ""
    multimodal: dict | None = None  # vision-language worst case: family, images, tokens, grids (issue #5)
    dataset: dict | None = None  # --dataset: distribution, chosen limits, samples they cut, problem lines
    plan: dict | None = None  # `autotune plan`: the fake-tensor measurement and breakdown (validation.method "planned")
    # RLHF (issue #12): how the run was modelled -- type, target framework, the reference model's
    # residency, the rollout engine's share of the card (reserved or measured, `auto`'s sizing).
    rlhf: dict | None = None
    swift_args: str | None = None  # probe --swift-args: the user's ms-swift file (absolute), which `emit swift --swift-args` writes back

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=False, width=100)

    def apply(self, training_args):
        """A copy of a Hugging Face `TrainingArguments` with the tuned values set (see autotune/recipe/apply.py)."""
        from .apply import apply

        return apply(self, training_args)


# ---------------------------------------------------------------- loading


def _build(tp, value, where: str):
    """Turn plain YAML data into the annotated type (nested dataclasses, lists of them)."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ValueError(f"{where}: expected a mapping")
        hints = typing.get_type_hints(tp)
        names = {f.name for f in dataclasses.fields(tp)}
        unknown = set(value) - names
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
        missing = [f.name for f in dataclasses.fields(tp)
                   if f.name not in value and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        if missing:  # a file cut short (a copy that stopped) or edited by hand
            raise ValueError(f"{where}: missing key(s) {', '.join(missing)}; is the file cut short? "
                             "Restore it, or probe again to write it anew")
        return tp(**{k: _build(hints[k], v, f"{where}.{k}") for k, v in value.items()})
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        return _build(inner[0], value, where)
    if origin is list:
        (inner,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ValueError(f"{where}: expected a list")
        return [_build(inner, v, f"{where}[{i}]") for i, v in enumerate(value)]
    return _checked(tp, value, where)


# What a hand-edited value must be, said the way a person writes it.
_KINDS = {int: "a whole number", float: "a number", bool: "true or false", str: "a string", dict: "a mapping"}


def _checked(tp, value, where: str):
    """A leaf value of the annotated type (bool is not taken for a number, nor a number for bool)."""
    if tp not in _KINDS:
        return value
    ok = {int: isinstance(value, int) and not isinstance(value, bool),
          float: isinstance(value, (int, float)) and not isinstance(value, bool),
          bool: isinstance(value, bool), str: isinstance(value, str), dict: isinstance(value, dict)}[tp]
    if not ok:
        raise ValueError(f"{where.removeprefix('recipe.')} must be {_KINDS[tp]}, not {value!r}")
    return value


def recipe_from_dict(data: dict) -> Recipe:
    if not isinstance(data, dict) or "schema" not in data:
        raise ValueError("not an autotune recipe (no 'schema' key)")
    if data["schema"] != SCHEMA:
        newer = isinstance(data["schema"], int) and not isinstance(data["schema"], bool) and data["schema"] > SCHEMA
        fix = ("a newer autotune wrote it: upgrade autotune (pip install -U autotune-oom), or probe again with this one"
               if newer else "probe again with this autotune to write it anew")
        raise ValueError(f"recipe schema {data['schema']} is not supported (this autotune reads schema {SCHEMA}); {fix}")
    return _build(Recipe, data, "recipe")


def load_recipe(path: str | os.PathLike, flag: str = "RECIPE", maker: str = "python -m autotune probe ... --out FILE") -> Recipe:
    """Read a recipe written by `autotune probe` (or a plan: `probe --from-plan`, whose `flag` and
    `maker` the errors then name). Raises UsageError naming what is wrong."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise UsageError(flag, f"no recipe at {path}", f"run `{maker}` first") from None
    except OSError as exc:
        raise UsageError(flag, f"cannot read {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise UsageError(flag, f"{path} is not valid YAML ({str(exc).splitlines()[0]})") from None
    try:
        return recipe_from_dict(data)
    except (ValueError, TypeError) as exc:
        raise UsageError(flag, f"{path}: {exc}") from None


# ---------------------------------------------------------------- writing


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_atomic(path: str | os.PathLike, text: str | bytes, executable: bool = False) -> None:
    """Write to a temporary file beside `path`, then rename: a reader (or a Ctrl-C) never sees
    half a file. The file gets the mode `open()` would give it (0666 & ~umask, or 0777 & ~umask
    when `executable`), not mkstemp's owner-only 0600."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, (0o777 if executable else 0o666) & ~_umask())
        with os.fdopen(fd, "wb" if isinstance(text, bytes) else "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_recipe(recipe: Recipe, path: str | os.PathLike) -> None:
    """YAML, or JSON where the name asks for it (load_recipe reads both: JSON is YAML)."""
    text = json.dumps(recipe.to_dict(), indent=2) + "\n" if str(path).endswith(".json") else recipe.to_yaml()
    write_atomic(path, text)


def check_writable(path: str | os.PathLike, force: bool, flag: str = "--out") -> None:
    """Refuse, before any work, to overwrite a file the user has unless they asked."""
    if str(path) == "-":  # not stdout here: the file would be named "-"
        raise UsageError(flag, "'-' (stdout) is not a file this command can write to",
                         "give a file name" + (", and add --format json to print the result on stdout" if flag == "--out" else ""))
    path = Path(path)
    if path.is_dir():
        raise UsageError(flag, f"{path} is a directory", "give a file name such as recipe.yaml")
    if path.exists() and not force:
        raise UsageError(flag, f"{path} already exists", f"choose another {flag}, or add --force to overwrite it")
    parent = path.parent  # the nearest folder that exists: write_atomic makes the missing ones below it
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise UsageError(flag, f"{parent} is a file, not a directory, so {path} cannot be made",
                         f"give a {flag} outside {parent}")
    if not _can_create_in(parent):
        raise UsageError(flag, f"cannot write into {parent}", f"give a {flag} in a directory you can write to")


def _can_create_in(directory: Path) -> bool:
    """Whether a file can be made in `directory`: tried, not asked of the permission bits
    (root passes os.access everywhere; a read-only mount or /proc refuses anyway)."""
    try:
        fd, name = tempfile.mkstemp(prefix=".autotune-", suffix=".tmp", dir=directory)
    except OSError:
        return False
    os.close(fd)
    Path(name).unlink(missing_ok=True)
    return True
