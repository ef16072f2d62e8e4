"""Under torchrun, each process is one rank of the artifact (SPMD): from_pretrained joins torchrun's group
instead of starting ranks, and every rank running the same generate gives transformers' tokens."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from support.tiny import transformers_greedy

WORKER = Path(__file__).parent / "workers" / "torchrun_generate.py"


def test_generate_under_torchrun(tiny_tp2_artifact, tiny_reference, tmp_path):
    prompts = [[1, 400, 1203, 77], [1, 9, 18000, 3, 5]]
    out = tmp_path / "out.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(WORKER), str(tiny_tp2_artifact), str(out), json.dumps(prompts)],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["world"] == 2
    assert result["tokens"] == [transformers_greedy(tiny_reference, p, 12) for p in prompts]
