"""Encoder model classes: an encoder artifact called like a transformers model, returning transformers' output
classes, and usable as `transformers.pipeline(task, model=neuron_model, tokenizer=tokenizer)`.

What a transformers pipeline reads from its model (5.x, pipelines/base.py and the task pipelines): `device`
(compared with the pipeline's device; `to()` is called when they differ), `dtype`, `can_generate()`, `config`
(id2label, num_labels, problem_type), `forward` (its signature is inspected), `__call__`, and
`__class__.__name__`, which is checked against transformers' model mappings and only *logged* when absent.
Nothing else: these classes do not subclass PreTrainedModel.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from neuron_cache import Artifact
from neuron_infer.artifact_model import ArtifactModel
from neuron_infer.encoder_runtime import EncoderRuntime
from neuron_infer.sentence_encode import SentenceEncoder

# Keyword arguments transformers callers (pipelines, user code) pass that ask for nothing this model would change:
# accepted with these values only. Anything else (output_hidden_states=True, labels, ...) is refused by name.
IGNORED_KWARGS: dict[str, tuple[Any, ...]] = {
    "output_attentions": (None, False), "output_hidden_states": (None, False), "use_cache": (None, False, True),
    "position_ids": (None,), "head_mask": (None,), "inputs_embeds": (None,), "labels": (None,),
}


class NeuronEncoderModel(ArtifactModel):
    """An encoder artifact of one of `tasks`, called as `model(input_ids, attention_mask, token_type_ids)`."""

    tasks: tuple[str, ...] = ()
    main_input_name = "input_ids"
    base_model_prefix = "neuron"  # fill-mask's pipeline names it in one error message

    def __init__(self, artifact: Artifact, *, trust_remote_code: bool = False, origin: str | None = None):
        check_task(type(self), artifact.config.task, artifact.root)
        self.artifact = artifact
        self.neuron_config = artifact.config
        self.runtime = EncoderRuntime(artifact, trust_remote_code=trust_remote_code, origin=origin)
        self._config: Any = None

    # ---- what transformers (pipelines) read from a model ----------------------------------------
    @property
    def config(self) -> Any:
        """transformers.PretrainedConfig of the exported checkpoint (its config.json), built on first access."""
        if self._config is None:
            from neuron_infer.modeling import _load_model_config

            self._config = _load_model_config(self.artifact.root)
        return self._config

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")  # inputs and outputs are host tensors, wherever the graphs run

    @property
    def dtype(self) -> torch.dtype:
        return getattr(torch, self.neuron_config.torch_dtype)

    def can_generate(self) -> bool:
        return False

    def to(self, *_args: Any, **_kwargs: Any) -> NeuronEncoderModel:
        """A no-op: the graphs run where they were compiled for (a pipeline calls this with its device)."""
        return self

    def eval(self) -> NeuronEncoderModel:
        return self

    # ---- calling ---------------------------------------------------------------------------------
    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, return_dict: bool | None = True, **kwargs: Any) -> Any:
        """(n, L) token ids (padded left or right) -> this task's transformers output (per-token outputs: 0 at
        padding positions). Inputs longer than the compiled sequence are refused: tokenize with truncation=True."""
        for name, value in kwargs.items():
            if name not in IGNORED_KWARGS or isinstance(value, torch.Tensor) or value not in IGNORED_KWARGS[name]:
                raise TypeError(f"{type(self).__name__}.forward() got {name}={_short(value)}, which a compiled "
                                f"artifact does not support; it accepts input_ids, attention_mask, token_type_ids "
                                f"(and {', '.join(sorted(IGNORED_KWARGS))} at their defaults)")
        if input_ids is None:
            raise ValueError(f"{type(self).__name__} needs input_ids (inputs_embeds are not supported)")
        outputs = self.runtime.run(input_ids, attention_mask, token_type_ids)
        result = self._output(outputs)
        return result if return_dict or return_dict is None else result.to_tuple()

    __call__ = forward

    def _output(self, outputs: dict[str, torch.Tensor]) -> Any:
        raise NotImplementedError


class NeuronModelForFeatureExtraction(NeuronEncoderModel, SentenceEncoder):
    """Token states (`last_hidden_state`) and, for a pooled artifact, sentence embeddings (`pooler_output`, not
    normalized; `encode()` normalizes as the model does)."""

    tasks = ("feature-extraction", "sentence-similarity")

    def _output(self, outputs: dict[str, torch.Tensor]) -> Any:
        from transformers.modeling_outputs import BaseModelOutput, BaseModelOutputWithPooling

        if "sentence_embedding" in outputs:
            return BaseModelOutputWithPooling(last_hidden_state=outputs["last_hidden_state"],
                                              pooler_output=outputs["sentence_embedding"])
        return BaseModelOutput(last_hidden_state=outputs["last_hidden_state"])


class NeuronModelForMaskedLM(NeuronEncoderModel):
    tasks = ("fill-mask",)

    def _output(self, outputs: dict[str, torch.Tensor]) -> Any:
        from transformers.modeling_outputs import MaskedLMOutput

        return MaskedLMOutput(logits=outputs["logits"])


class NeuronModelForSequenceClassification(NeuronEncoderModel):
    tasks = ("text-classification",)

    def _output(self, outputs: dict[str, torch.Tensor]) -> Any:
        from transformers.modeling_outputs import SequenceClassifierOutput

        return SequenceClassifierOutput(logits=outputs["logits"])


class NeuronModelForTokenClassification(NeuronEncoderModel):
    tasks = ("token-classification",)

    def _output(self, outputs: dict[str, torch.Tensor]) -> Any:
        from transformers.modeling_outputs import TokenClassifierOutput

        return TokenClassifierOutput(logits=outputs["logits"])


class NeuronModelForQuestionAnswering(NeuronEncoderModel):
    tasks = ("question-answering",)

    def _output(self, outputs: dict[str, torch.Tensor]) -> Any:
        from transformers.modeling_outputs import QuestionAnsweringModelOutput

        return QuestionAnsweringModelOutput(start_logits=outputs["start_logits"], end_logits=outputs["end_logits"])


ENCODER_CLASSES: tuple[type[NeuronEncoderModel], ...] = (
    NeuronModelForFeatureExtraction, NeuronModelForMaskedLM, NeuronModelForSequenceClassification,
    NeuronModelForTokenClassification, NeuronModelForQuestionAnswering,
)


def class_name_for(task: str) -> str:
    if task == "text-generation":
        return "NeuronModelForCausalLM"
    return next((c.__name__ for c in ENCODER_CLASSES if task in c.tasks), "?")


def check_task(cls: type[NeuronEncoderModel], task: str, root: Path) -> None:
    if task not in cls.tasks:
        raise ValueError(f"{root} holds a '{task}' artifact; {cls.__name__} runs {' or '.join(map(repr, cls.tasks))}. "
                         f"Load it with {class_name_for(task)} (or neuron_infer.load_model, which picks the class).")


def _short(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"<tensor {list(value.shape)}>"
    return repr(value)[:60]


def load_model(model_id: str | Path, **kwargs: Any) -> Any:
    """The model class for the artifact's task (NeuronModelForCausalLM for text-generation), opened with
    `from_pretrained(model_id, **kwargs)`. Hub ids are downloaded once: the task is read from the download."""
    from neuron_cache import CONFIG_NAME, NeuronConfig
    from neuron_infer.artifact_model import _download
    from neuron_infer.modeling import NeuronModelForCausalLM

    if kwargs.get("export"):
        raise ValueError("load_model opens existing artifacts; to export, call the task's class: "
                         "NeuronModelFor<Task>.from_pretrained(checkpoint, export=True)")
    path = Path(model_id)
    if not path.is_dir():
        path = _download(str(model_id), kwargs.get("revision"), kwargs.get("token"))
    task = NeuronConfig.load(path / CONFIG_NAME).task
    classes = {c.__name__: c for c in (*ENCODER_CLASSES, NeuronModelForCausalLM)}
    return classes[class_name_for(task)].from_pretrained(model_id, **kwargs)
