"""NeuronTrainer: a small training loop for tensor/sequence-parallel models under torchrun.

Why not transformers.Trainer: it wraps the model for data parallelism itself (DDP through
accelerate) with every process as a DP rank, shards data by world size, clips gradients as if
parameters were whole, and saves `model.state_dict()` as one HF checkpoint. Under TP each of those
is wrong (TP ranks must see the same batch, replicated copies must count once in the norm, shards
need a plan to become a checkpoint), so the loop is our own and stays short.

One optimizer step: the micro-batches of all gradient-accumulation steps and all DP ranks count
their labelled tokens together, each micro-batch's summed loss is divided by that global count,
and gradients are summed over DP. The step is therefore the same computation as one big batch.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import nn

from neuron_train.parallel.comm import all_reduce_
from neuron_train.parallel.grads import clip_grad_norm_, sync_gradients
from neuron_train.training.args import NeuronTrainingArguments
from neuron_train.training.checkpoint import load_checkpoint, rotate_checkpoints, save_checkpoint
from neuron_train.training.data import BatchOrder, Collator, Example
from neuron_train.training.optim import build_optimizer, build_scheduler


class NeuronTrainer:
    def __init__(
        self,
        model: nn.Module,
        args: NeuronTrainingArguments,
        train_dataset: Sequence[Example],
        *,
        data_collator: Callable[[list[Example]], dict[str, torch.Tensor]] | None = None,
        tokenizer: Any = None,
    ) -> None:
        self.model, self.args, self.dataset, self.tokenizer = model, args, train_dataset, tokenizer
        self.dims = model.dims
        if self.dims.tp != args.tensor_parallel_size:
            raise ValueError(
                f"tensor_parallel_size={args.tensor_parallel_size} but the model was built with tp={self.dims.tp}; "
                "build it with ParallelDims.build(tp=args.tensor_parallel_size)."
            )
        wants_sp = args.sequence_parallel and self.dims.tp > 1
        if wants_sp != model.sequence_parallel:
            raise ValueError(
                f"sequence_parallel={args.sequence_parallel} disagrees with the model (built with "
                f"sequence_parallel={model.sequence_parallel}); pass the same flag to build_model."
            )
        model.gradient_checkpointing = args.gradient_checkpointing
        pad = getattr(tokenizer, "pad_token_id", None) if tokenizer is not None else None
        self.collate = data_collator or Collator(pad_token_id=pad if pad is not None else 0, pad_to_multiple_of=self.dims.tp)
        self.order = BatchOrder(len(train_dataset), batch_size=args.per_device_train_batch_size,
                                dp=self.dims.dp, dp_rank=self.dims.dp_rank, seed=args.seed)
        if args.max_steps > 0:
            self.total_steps = args.max_steps
        else:
            self.total_steps = max(1, math.ceil(args.num_train_epochs * self.order.per_epoch / args.gradient_accumulation_steps))
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.device = self.params[0].device if self.params else torch.device("cpu")
        self.optimizer = build_optimizer(model, args, self.dims)
        self.scheduler = build_scheduler(self.optimizer, args, self.total_steps)
        self.step = 0
        self.log_history: list[dict] = []
        self.output_dir = Path(args.output_dir)

    # ------------------------------------------------------------------------------------------
    def train(self, resume_from_checkpoint: str | Path | None = None) -> list[dict]:
        if resume_from_checkpoint is not None:
            state = load_checkpoint(Path(resume_from_checkpoint), model=self.model, optimizer=self.optimizer,
                                    scheduler=self.scheduler, dims=self.dims)
            self.step, self.log_history = state["step"], state["log_history"]
            self.order.load_state_dict(state["batch_order"])
        if self.dims.is_main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
        bar = self._progress_bar()
        self.model.train()
        while self.step < self.total_steps:
            entry = self.training_step()
            self.step += 1
            if self.step % self.args.logging_steps == 0 or self.step == self.total_steps:
                self._log(entry, bar)
            if (self.args.save_steps and self.step % self.args.save_steps == 0) or self.step == self.total_steps:
                self.save_checkpoint()
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
        return self.log_history

    def training_step(self) -> dict:
        args, dims = self.args, self.dims
        start = time.perf_counter()
        batches = [self.collate([self.dataset[i] for i in next(self.order)]) for _ in range(args.gradient_accumulation_steps)]
        # Collectives run on the model's device (nccl cannot reduce CPU tensors).
        counts = torch.tensor([sum(float((b["labels"][:, 1:] != -100).sum()) for b in batches),
                               sum(float(b["attention_mask"].sum()) for b in batches)], dtype=torch.float64, device=self.device)
        all_reduce_(counts, dims.dp_group)
        label_tokens, tokens = counts.tolist()
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        aux_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        # The router load-balancing loss is a per-batch mean (transformers adds it to each batch's loss): the
        # step's value is its mean over micro-batches and DP ranks (DP gradients are summed).
        aux_scale = 1.0 / (len(batches) * dims.dp)
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16) if args.bf16 else nullcontext()
        for b in batches:
            mask = b.get("attention_mask")
            with autocast:
                out = self.model(b["input_ids"].to(self.device), b["labels"].to(self.device),
                                 attention_mask=None if mask is None else mask.to(self.device))
            loss = out.loss_sum / max(label_tokens, 1.0)
            if out.router_aux_loss is not None:
                loss = loss + out.router_aux_loss * aux_scale
                aux_sum += out.router_aux_loss.detach().double() * aux_scale
            loss.backward()
            loss_sum += out.loss_sum.detach().double()
        all_reduce_(loss_sum, dims.dp_group)
        all_reduce_(aux_sum, dims.dp_group)
        sync_gradients(self.model, dims)
        grad_norm = clip_grad_norm_(self.params, dims, args.max_grad_norm)
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        elapsed = time.perf_counter() - start
        return {"step": self.step + 1, "loss": float(loss_sum) / max(label_tokens, 1.0) + float(aux_sum),
                "router_aux_loss": float(aux_sum), "learning_rate": lr,
                "grad_norm": float(grad_norm), "tokens": int(tokens), "tokens_per_s": tokens / elapsed, "step_time_s": elapsed}

    def save_checkpoint(self) -> Path:
        path = self.output_dir / f"checkpoint-{self.step}"
        state = {"step": self.step, "batch_order": self.order.state_dict(), "log_history": self.log_history,
                 "args": self.args.to_dict(), "total_steps": self.total_steps}
        save_checkpoint(path, model=self.model, optimizer=self.optimizer, scheduler=self.scheduler, dims=self.dims,
                        trainer_state=state, tokenizer=self.tokenizer)
        if self.dims.is_main:
            rotate_checkpoints(self.output_dir, self.args.save_total_limit)
        return path

    # ------------------------------------------------------------------------------------------
    def _progress_bar(self):
        if not self.dims.is_main or self.args.disable_tqdm:
            return None
        from tqdm.auto import tqdm

        return tqdm(total=self.total_steps, initial=self.step, desc="train", dynamic_ncols=True)

    def _log(self, entry: dict, bar) -> None:
        self.log_history.append(entry)
        if not self.dims.is_main:
            return
        line = json.dumps({k: (round(v, 6) if isinstance(v, float) else v) for k, v in entry.items()})
        with open(self.output_dir / "log.jsonl", "a") as f:
            f.write(line + "\n")
        if bar is not None:
            bar.set_postfix(loss=f"{entry['loss']:.4f}", lr=f"{entry['learning_rate']:.2e}", tok_s=f"{entry['tokens_per_s']:.0f}")
            bar.write(line)
        else:
            print(line, flush=True)
