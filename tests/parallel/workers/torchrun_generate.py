"""Run under `torchrun --nproc_per_node 2`: every rank loads the tensor-parallel artifact as its own rank (no
processes of its own) and runs the same generate; rank 0 writes the tokens. Args: ARTIFACT OUT_JSON."""

import json
import sys

import torch
import torch.distributed as dist

from neuron_infer import NeuronModelForCausalLM
from neuron_infer.runtime import DecoderRuntime

if __name__ == "__main__":
    model = NeuronModelForCausalLM.from_pretrained(sys.argv[1])
    assert type(model.runtime) is DecoderRuntime, type(model.runtime)
    prompts = json.loads(sys.argv[3])
    out = [model.generate(torch.tensor([p]), max_new_tokens=12, do_sample=False, eos_token_id=None)[0, len(p):].tolist()
           for p in prompts]
    if dist.get_rank() == 0:
        with open(sys.argv[2], "w") as f:
            json.dump({"tokens": out, "world": dist.get_world_size()}, f)
    dist.destroy_process_group()
