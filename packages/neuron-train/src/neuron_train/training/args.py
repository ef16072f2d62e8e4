"""NeuronTrainingArguments: everything the training loop reads, typed and validated up front.

Field names and defaults follow transformers.TrainingArguments for the fields that exist there, so
a user's habits carry over. It does not subclass it: TrainingArguments carries ~100 fields this loop
would silently ignore (deepspeed, fsdp, evaluation, hub...) and its __post_init__ sets up
accelerate's device state, which would compete with our own process groups.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

_SCHEDULERS = ("linear", "cosine", "constant", "constant_with_warmup")


@dataclass(kw_only=True)
class NeuronTrainingArguments:
    output_dir: str
    # parallelism
    tensor_parallel_size: int = 1
    sequence_parallel: bool = True  # only acts when tensor_parallel_size > 1
    zero_1: bool = False  # shard optimizer state over data-parallel ranks
    # batch and schedule
    per_device_train_batch_size: int = 1
    gradient_accumulation_steps: int = 1
    max_steps: int = -1  # > 0 overrides num_train_epochs
    num_train_epochs: float = 1.0
    max_seq_length: int = 512
    # optimizer (AdamW)
    learning_rate: float = 5e-5
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0  # 0 disables clipping
    lr_scheduler_type: str = "linear"
    warmup_steps: int = 0
    # precision and memory
    bf16: bool = False  # bf16 autocast for matmuls; master weights and optimizer state stay fp32
    gradient_checkpointing: bool = False
    # logging and checkpoints
    logging_steps: int = 1
    save_steps: int = 0  # 0: save only at the end
    save_total_limit: int | None = None
    disable_tqdm: bool = False
    seed: int = 42

    def __post_init__(self) -> None:
        positive = ("tensor_parallel_size", "per_device_train_batch_size", "gradient_accumulation_steps", "max_seq_length", "logging_steps")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r} must be an integer >= 1.")
        for name in ("save_steps", "warmup_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)!r} must be >= 0 (0 disables it).")
        if self.max_steps <= 0 and self.num_train_epochs <= 0:
            raise ValueError(f"max_steps={self.max_steps} and num_train_epochs={self.num_train_epochs}: set one of them > 0.")
        if self.lr_scheduler_type not in _SCHEDULERS:
            raise ValueError(f"lr_scheduler_type={self.lr_scheduler_type!r} is not supported; use one of {_SCHEDULERS}.")
        if self.learning_rate < 0 or self.max_grad_norm < 0:
            raise ValueError(f"learning_rate={self.learning_rate} and max_grad_norm={self.max_grad_norm} must be >= 0.")
        if self.save_total_limit is not None and self.save_total_limit < 1:
            raise ValueError(f"save_total_limit={self.save_total_limit} must be None (keep all) or >= 1.")

    def to_dict(self) -> dict:
        return asdict(self)
