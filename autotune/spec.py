"""ProbeSpec: what to probe, validated once, with errors that name the flag."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from .errors import UsageError
from .recipe.levers import check_spec as check_levers
from .recipe.lora import ALL_LINEAR, NAMES_FLAG, REGEX_FLAG, check_regex, parse_names
from .recipe.rlhf import RLHFSpec

DTYPES = ("bfloat16", "float16", "float32")
TRAIN_TYPES = ("full", "lora", "qlora")
# Trainer `optim` names: the Trainer default, and bitsandbytes' 8-bit / paged AdamW.
OPTIMIZERS = ("adamw_torch_fused", "adamw_torch", "adamw_bnb_8bit", "paged_adamw_8bit", "paged_adamw_32bit")
ATTN_IMPLEMENTATIONS = ("flash_attention_2", "sdpa", "eager")
# 10% of the card: covers the CUDA context and cuBLAS workspaces (0.5-1 GiB, outside the
# allocator), NCCL buffers, and the drift of the caching allocator over a long run. See README.
DEFAULT_MARGIN = 0.10
DEFAULT_MAX_BATCH_SIZE = 256
DEFAULT_EVAL_STEPS = 4  # eval steps whose logits stay on the device before eval_accumulation_steps flushes them
DEFAULT_VALIDATE_STEPS = 20
# The sequence and media frontier (issue #14): what `auto` searches instead of the batch size.
FRONTIER_DIMENSIONS = ("max_length", "max_pixels", "video_frames")
DEFAULT_LENGTH_GRANULARITY = 64
TASKS = ("train", "eval")


# The rule that sizes a Qwen-VL image where the launch does (model/families/qwen_resize.py):
# transformers' processor (a script of the user's own, TRL, LLaMA-Factory: a thin strip under a
# small --max-pixels comes out past it) or qwen-vl-utils (ms-swift's templates: the largest grid).
PROCESSOR, QWEN_VL_UTILS = "processor", "qwen-vl-utils"
IMAGE_RULES = (PROCESSOR, QWEN_VL_UTILS)

@dataclass
class ProbeSpec:
    max_length: int | None  # None only with `dataset`, which measures it
    model: str | None = None  # a local Hugging Face model directory (real weights)
    model_config: str | None = None  # config.json, a directory holding one, or a built-in name
    train_type: str = "full"
    lora_r: int = 8
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_target_modules: tuple = (ALL_LINEAR,)  # module names, or all-linear (recipe/lora.py)
    lora_target_regex: str | None = None  # instead of the names: a regex full-matched against module names
    dtype: str = "bfloat16"
    device: str | None = None  # cuda | sim; None = cuda when available
    gpu_memory: int | None = None  # bytes
    margin: float = DEFAULT_MARGIN
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
    global_batch_size: int | None = None
    world_size: int = 1
    steps: int = 3  # optimizer steps per trial; peak is read from step 2 on
    gradient_checkpointing: bool = False  # what the model is built with; the search sets it per candidate
    attn_implementation: str = "sdpa"  # what the model is built with; the search switches it per candidate
    seed: int = 0
    # Clusters (issue #6): see autotune/cluster/.
    strategies: tuple = ()  # sharding strategies to probe: ddp, fsdp, zero2, zero3, zero2_offload, zero3_offload
    isolate: bool = False  # run trials in supervised worker processes even on one device
    trial_timeout: float = 1800.0  # seconds a trial (or a worker's model load) may take
    journal: str | None = None  # journal of finished trials (resume); None: none
    resume: bool = False  # require a matching journal
    gpu_memory_per_rank: tuple | None = None  # bytes per rank (a pool of unequal cards; a test hook on sim)
    env: dict = field(default_factory=dict)  # environment for the trial workers
    expandable_segments: str = "auto"  # auto: probe it on CUDA; on; off
    # The search space (issue #3). Candidates that cannot run here are recorded as skipped.
    attn_candidates: tuple = ATTN_IMPLEMENTATIONS
    gradient_checkpointing_candidates: tuple = (False, True)
    # Memory levers (issue #15, levers.py); off unless asked. every_n_layers: N (checkpoint every
    # N-th layer), "partial" (N searched beside off and on), None (all-or-nothing checkpointing).
    every_n_layers: int | str | None = None
    activation_offloading: tuple = (False,)
    packing: tuple = (False,)
    padding_free: tuple = (False,)
    liger: tuple = (False,)
    sequence_parallel_size: int = 1  # ms-swift's; written to its launch files, not measured here
    eval: bool = True  # search the eval batch frontier
    plan_first: str = "auto"  # on: plan under fake tensors first, each search starts there; auto: on for cuda; off
    eval_steps: int = DEFAULT_EVAL_STEPS  # eval steps accumulated on the device (-> eval_accumulation_steps)
    prediction_loss_only: bool = False  # False: keep logits like a Trainer with compute_metrics (the costly path)
    predict_with_generate: bool = False  # eval probes generate() (KV cache growth) instead
    max_new_tokens: int | None = None
    # What the eval phase keeps (training_args.EVAL_OUTPUTS); None: from the two flags above,
    # else "logits" (the Hugging Face Trainer with a compute_metrics). The CLI sets "loss" for
    # --emit swift (ms-swift sets no compute_metrics by default).
    eval_outputs: str | None = None
    # Whether the launch switches `use_cache` off in the language model's sub-configs too, as
    # ms-swift does (model/kv_cache.py), not in the top config alone, as the HF Trainer does: under
    # the HF Trainer a vision-language model's evaluation builds a KV cache. The CLI sets it for
    # --emit swift, as it defaults eval_outputs; text models are the same either way.
    use_cache_off_in_sub_configs: bool = False
    validate_steps: int = DEFAULT_VALIDATE_STEPS
    extras: dict = field(default_factory=dict)  # room for later phases' flags
    # Vision-language (issue #5). None: the family's / ms-swift's default.
    optim: str = "adamw_torch_fused"
    freeze_vit: bool | None = None
    freeze_aligner: bool | None = None
    freeze_llm: bool | None = None
    max_pixels: int | None = None
    images_per_sample: int | None = None
    audio_clips: int | None = None  # audio clips per sample (Qwen2.5-Omni's thinker), each 30 s at worst
    video_frames: int | None = None
    video_max_pixels: int | None = None
    video_min_pixels: int | None = None  # per frame: ms-swift's VIDEO_MIN_PIXELS (qwen-vl-utils' frame minimum)
    use_audio_in_video: bool = False  # the video's sound track goes in too (Qwen2.5-Omni; ms-swift's USE_AUDIO_IN_VIDEO)
    image_resize: str | None = None  # which rule sizes a Qwen-VL image (IMAGE_RULES); None: the processor's, the larger
    dataset: str | None = None  # ms-swift JSONL; its samples set max_length / max_pixels
    length_percentile: float | None = None  # probe at this percentile of the dataset instead of its max
    tokenizer: str | None = None  # a local tokenizer/processor directory for --dataset
    system: str | None = None  # the system prompt the run gives a --dataset sample without one (ms-swift's --system)
    root_image_dir: str | None = None  # ms-swift's ROOT_IMAGE_DIR as the --swift-args file sets it (else the shell's)
    dataset_whole: bool = False  # --swift-args's data: its worst case only where every sample is measured, else max_length
    # Issue #14. `frontier`: the one limit searched instead of the batch ("auto" on the command
    # line), at a fixed per-device batch; the searched field's own value is ignored (max_length
    # None: up to the model's position limit).
    frontier: str | None = None
    length_granularity: int = DEFAULT_LENGTH_GRANULARITY  # --max-length auto: a multiple of this
    per_device_train_batch_size: int | None = None  # the fixed batch of a frontier search (default 1)
    per_device_eval_batch_size: int | None = None  # --task eval with a frontier (default 1)
    task: str = "train"  # "eval": evaluation only (Trainer.evaluate / generate), no training
    # RLHF (issue #12, recipe/rlhf.py): GRPO or DPO through TRL's trainers; None: supervised fine-tuning.
    rlhf: RLHFSpec | None = None

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if (self.model is None) == (self.model_config is None):
            raise UsageError("--model", "give exactly one of --model DIR (real weights) or --model-config PATH|NAME (random init)",
                             "for example --model-config tiny-llama")
        if self.max_length is None and self.dataset is None and self.frontier != "max_length":
            raise UsageError("--max-length", "required (or give --dataset FILE.jsonl to measure it)", "for example --max-length 2048")
        if self.max_length is not None:
            _positive("--max-length", self.max_length)
        self._validate_multimodal()
        self._validate_frontier()
        _positive("--max-batch-size", self.max_batch_size)
        _positive("--lora-r", self.lora_r)
        _positive("--lora-alpha", self.lora_alpha)
        if not (isinstance(self.lora_dropout, (int, float)) and 0.0 <= self.lora_dropout <= 1.0):  # torch's Dropout
            raise UsageError("--lora-dropout", f"must be a probability in [0, 1], got {self.lora_dropout}", "for example --lora-dropout 0.05")
        self._validate_lora_targets()
        if not (isinstance(self.seed, int) and 0 <= self.seed < 2**32):  # numpy's, which transformers' set_seed seeds
            raise UsageError("--seed", f"must be a whole number in [0, 2**32), got {self.seed}", "for example --seed 0")
        _positive("--world-size", self.world_size)
        if self.global_batch_size is not None:
            _positive("--global-batch-size", self.global_batch_size)
        if not isinstance(self.steps, int) or self.steps < 3:
            raise UsageError("--steps", f"need at least 3 optimizer steps per trial, got {self.steps}",
                             "AdamW creates its state in step 1, so the peak is read from step 2 on")
        if not (0.0 <= self.margin < 1.0):
            raise UsageError("--margin", f"must be a fraction in [0, 1), got {self.margin}", "for example --margin 0.1 keeps 10% free")
        if self.dtype not in DTYPES:
            raise UsageError("--dtype", f"unknown dtype {self.dtype!r}", f"choose one of {', '.join(DTYPES)}")
        if self.train_type not in TRAIN_TYPES:
            raise UsageError("--train-type", f"unknown training type {self.train_type!r}", f"choose one of {', '.join(TRAIN_TYPES)}")
        self._validate_fp16_full()
        if self.attn_implementation not in ATTN_IMPLEMENTATIONS:
            raise UsageError("--attn", f"unknown attention implementation {self.attn_implementation!r}",
                             f"choose one of {', '.join(ATTN_IMPLEMENTATIONS)}")
        if self.gpu_memory is not None:
            _positive("--gpu-memory", self.gpu_memory)
        _check_cluster(self)
        self._validate_space()
        self._validate_rlhf()

    def _validate_lora_targets(self) -> None:
        self.lora_target_modules = parse_names(self.lora_target_modules)  # a worker's spec arrives as a list
        if self.lora_target_regex is None:
            return
        check_regex(self.lora_target_regex)
        if self.lora_target_modules != (ALL_LINEAR,):
            raise UsageError(REGEX_FLAG, f"and {NAMES_FLAG} both choose the LoRA targets", "give one of them")

    def _validate_fp16_full(self) -> None:
        """float16 weights trained in full under fp16 mixed precision (what ms-swift and the launch
        files set for float16) stop at the first optimizer step on a card: the GradScaler refuses
        fp16 gradients. LoRA trains its adapters in fp32 (peft casts them; ms-swift too), and
        DeepSpeed keeps fp32 master weights, so those run."""
        if self.dtype != "float16" or self.train_type != "full":
            return
        if self.strategies and all(s.startswith("zero") for s in self.strategies):
            return
        raise UsageError("--dtype", "float16 weights cannot train in full under fp16 mixed precision: the GradScaler "
                         "refuses fp16 gradients ('Attempting to unscale FP16 gradients'), so the launched run stops at its "
                         "first optimizer step", "use --dtype float32 or bfloat16, --train-type lora, or a DeepSpeed "
                         "--strategy zero2 / zero3 (fp32 master weights)")

    def _validate_rlhf(self) -> None:
        if self.rlhf is None:
            return
        if isinstance(self.rlhf, dict):  # a spec sent to a worker process as plain data
            self.rlhf = RLHFSpec(**self.rlhf)
        self.rlhf.validate(self.world_size, self.global_batch_size, self.max_batch_size)
        import importlib.util

        if importlib.util.find_spec("trl") is None:
            from .extras import install_hint

            raise UsageError("--rlhf-type", "RLHF probes run TRL's own trainers, and TRL is not installed", install_hint("rlhf"))
        if self.rlhf.rlhf_type == "grpo" and self.global_batch_size is None and self.rlhf.steps_per_generation is None:
            # The generation batch is the global batch; keep one that holds whole groups (ms-swift's 16, rounded up).
            self.global_batch_size = self.rlhf.default_global_batch(self.world_size)
            self.rlhf = dataclasses.replace(self.rlhf, global_batch_defaulted=True)
        for flag, bad in (("--task eval", self.task == "eval"), ("--max-length auto", self.frontier is not None),
                          ("--predict-with-generate", self.predict_with_generate)):
            if bad:
                raise UsageError("--rlhf-type", f"an RLHF probe does not take {flag} yet", f"leave {flag} out")
        if "fsdp" in self.strategies:
            # The TRL trainer shards itself (trials/rlhf_run.py); accelerate's FSDP plugin needs CUDA.
            where = ("accelerate's FSDP plugin, which TRL's trainer shards through, needs CUDA" if self.device not in (None, "cuda")
                     else "the trials do not run TRL's trainer under FSDP yet")
            raise UsageError("--strategy", f"an RLHF probe cannot measure fsdp: {where}",
                             "probe with --strategy zero2 / zero3 (or ddp), or size FSDP with `autotune plan --strategy fsdp`")
        if self.eval_outputs not in (None, "loss"):
            raise UsageError("--eval-outputs", "TRL's trainers evaluate their loss (and the rewards they log)", "leave --eval-outputs out")

    def _validate_multimodal(self) -> None:
        if self.image_resize is not None and self.image_resize not in IMAGE_RULES:
            raise UsageError("--image-resize", f"unknown rule {self.image_resize!r}", f"choose {' or '.join(IMAGE_RULES)}")
        if self.optim not in OPTIMIZERS:
            raise UsageError("--optim", f"unknown optimizer {self.optim!r}", f"choose one of {', '.join(OPTIMIZERS)}")
        for flag, value in (("--max-pixels", self.max_pixels), ("--video-max-pixels", self.video_max_pixels),
                            ("--video-min-pixels", self.video_min_pixels)):
            if value is not None:
                _positive(flag, value)
        for flag, value in (("--images-per-sample", self.images_per_sample), ("--video-frames", self.video_frames),
                            ("--audio-clips", self.audio_clips)):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
                raise UsageError(flag, f"must be a whole number >= 0, got {value!r}")
        if self.use_audio_in_video and not self.video_frames and self.frontier != "video_frames":
            raise UsageError("--use-audio-in-video", "needs a video to take the sound track of", "add --video-frames N (or auto), or set it false")
        if self.tokenizer is not None and self.dataset is None:  # read only to measure the data
            raise UsageError("--tokenizer", "tokenizes --dataset FILE.jsonl, and no dataset is given", "add --dataset, or leave --tokenizer out")
        if self.system is not None and self.dataset is None:
            raise UsageError("--system", "counts in each --dataset sample's length, and no dataset is given", "add --dataset, or leave --system out")
        if self.length_percentile is not None:
            if self.dataset is None:
                raise UsageError("--length-percentile", "needs --dataset FILE.jsonl to take the percentile of")
            if not (0 < self.length_percentile <= 100):
                raise UsageError("--length-percentile", f"must be in (0, 100], got {self.length_percentile}", "for example --length-percentile 95")
    def _validate_frontier(self) -> None:
        if self.task not in TASKS:
            raise UsageError("--task", f"unknown task {self.task!r}", f"choose one of {', '.join(TASKS)}")
        for flag, value in (("--per-device-train-batch-size", self.per_device_train_batch_size),
                            ("--per-device-eval-batch-size", self.per_device_eval_batch_size)):
            if value is not None:
                _positive(flag, value)
        _positive("--length-granularity", self.length_granularity)
        if self.task == "eval" and not self.eval:
            raise UsageError("--no-eval", "--task eval is the evaluation", "leave --no-eval out")
        if self.task == "eval" and self.global_batch_size is not None:  # an evaluation has no optimizer step to accumulate for
            raise UsageError("--global-batch-size", "sets the training batch, and --task eval trains nothing",
                             "leave --global-batch-size out (the eval batch is searched)")
        if self.per_device_eval_batch_size is not None and (self.task != "eval" or self.frontier is None):
            raise UsageError("--per-device-eval-batch-size", "fixes the eval batch of an evaluation-only limit search",
                             "use it with --task eval and --max-length / --max-pixels / --video-frames auto")
        if self.frontier is None:
            if self.per_device_train_batch_size is not None:
                raise UsageError("--per-device-train-batch-size", "fixes the batch of a limit search",
                                 "add --max-length auto (or --max-pixels / --video-frames auto); the batch search is bounded by --max-batch-size")
            return
        if len(self.strategies) > 1:
            raise UsageError("--strategy", "a limit search runs under one sharding strategy", "give one --strategy, or search the batch")
        flag = "--" + self.frontier.replace("_", "-")
        if self.frontier not in FRONTIER_DIMENSIONS:
            raise UsageError(flag, f"cannot search {self.frontier!r}", f"auto applies to {', '.join(FRONTIER_DIMENSIONS)}")
        if self.dataset is not None:
            raise UsageError(flag, "auto searches the limit itself; --dataset measures it from the data", "give one of them")
        if self.frontier != "max_length" and self.max_length is None:
            raise UsageError("--max-length", f"{flag} auto searches at a given length cap", "add --max-length N (a number, not auto)")

    def _validate_space(self) -> None:
        unknown = [a for a in self.attn_candidates if a not in ATTN_IMPLEMENTATIONS]
        if unknown or not self.attn_candidates:
            raise UsageError("--attn", f"unknown attention implementation {', '.join(unknown) or '(none given)'}",
                             f"choose from {', '.join(ATTN_IMPLEMENTATIONS)}, comma-separated")
        if not self.gradient_checkpointing_candidates or any(not isinstance(g, bool) for g in self.gradient_checkpointing_candidates):
            raise UsageError("--gradient-checkpointing", "needs on, off or search")
        check_levers(self)
        _positive("--eval-steps", self.eval_steps)
        self._validate_eval_outputs()
        _positive("--validate-steps", self.validate_steps)
        if self.validate_steps < 3:
            raise UsageError("--validate-steps", f"need at least 3 steps, got {self.validate_steps}", "the default is 20")
        if self.predict_with_generate:
            if self.max_new_tokens is None:
                raise UsageError("--max-new-tokens", "--predict-with-generate needs the number of tokens to generate",
                                 "add --max-new-tokens 256 (your generation max_new_tokens)")
            _positive("--max-new-tokens", self.max_new_tokens)
        elif self.max_new_tokens is not None:
            raise UsageError("--max-new-tokens", "only means something with --predict-with-generate", "add --predict-with-generate")

    def _validate_eval_outputs(self) -> None:
        from .recipe.training_args import EVAL_OUTPUTS

        if self.eval_outputs is None:
            return
        if self.eval_outputs not in EVAL_OUTPUTS:
            raise UsageError("--eval-outputs", f"unknown value {self.eval_outputs!r}", f"choose one of {', '.join(EVAL_OUTPUTS)}")
        implied = "loss" if self.prediction_loss_only else "generate" if self.predict_with_generate else None
        if implied and implied != self.eval_outputs:
            flag = "--prediction-loss-only" if self.prediction_loss_only else "--predict-with-generate"
            raise UsageError("--eval-outputs", f"{self.eval_outputs} contradicts {flag} (which means {implied})", "give one of them")
        if self.eval_outputs == "generate" and not self.predict_with_generate:
            raise UsageError("--eval-outputs", "generate needs the generation settings", "use --predict-with-generate --max-new-tokens N")

    @property
    def eval_keeps(self) -> str:
        """What the eval phase keeps: loss | logits | argmax | generate."""
        if self.eval_outputs:
            return self.eval_outputs
        if self.rlhf is not None:
            return "loss"  # TRL's trainers: no compute_metrics
        if self.prediction_loss_only:
            return "loss"
        return "generate" if self.predict_with_generate else "logits"

    def eval_keep_settings(self) -> dict:
        """The eval phase's settings as trials, validation and the plan run it (Hugging Face names)."""
        keeps = self.eval_keeps
        settings = {"eval_outputs": keeps, "prediction_loss_only": keeps == "loss"}
        if keeps != "loss":
            settings["eval_accumulation_steps"] = self.eval_steps
        if keeps == "generate":
            settings.update(predict_with_generate=True, max_new_tokens=self.max_new_tokens)
        return settings

    @property
    def usable_fraction(self) -> float:
        return 1.0 - self.margin

    def replace(self, **changes) -> "ProbeSpec":
        return dataclasses.replace(self, **changes)


def _positive(flag: str, value) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise UsageError(flag, f"must be a positive whole number, got {value!r}")


def _check_cluster(spec: ProbeSpec) -> None:
    from .recipe.schema import STRATEGIES

    for strategy in spec.strategies:
        if strategy not in STRATEGIES:
            raise UsageError("--strategy", f"unknown strategy {strategy!r}", f"choose from {', '.join(STRATEGIES)}")
    if len(set(spec.strategies)) != len(spec.strategies):
        raise UsageError("--strategy", "a strategy is listed twice", "for example --strategy ddp,fsdp")
    if not (isinstance(spec.trial_timeout, (int, float)) and spec.trial_timeout > 0):
        raise UsageError("--trial-timeout", f"must be a positive number of seconds, got {spec.trial_timeout!r}")
    if spec.expandable_segments not in ("auto", "on", "off"):
        raise UsageError("--expandable-segments", f"unknown value {spec.expandable_segments!r}", "choose auto, on or off")
    for size in spec.gpu_memory_per_rank or ():
        _positive("--gpu-memory", size)
