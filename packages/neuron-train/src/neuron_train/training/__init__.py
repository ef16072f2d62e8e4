"""Training loop, arguments, data and checkpoints."""

from neuron_train.training.args import NeuronTrainingArguments
from neuron_train.training.trainer import NeuronTrainer

__all__ = ["NeuronTrainer", "NeuronTrainingArguments"]
