"""encoder_batching against a fake encoder graph: chunking by batch and sequence bucket, re-packing left padding,
restoring row order and positions. The fake graph's outputs depend on each row's real tokens only (as a
correctly masked encoder's do), so the expected values come from the unpadded token lists, not from the code
under test; the fake also asserts the graph-side contract (right padding, padding rows, pad ids)."""

from __future__ import annotations

import pytest
import torch

from neuron_infer.encoder_batching import is_per_token, plan_chunks, run_batched

PAD = 7
BATCH_BUCKETS, CONTEXT_BUCKETS = [1, 2, 4], [4, 8, 16]


class FakeEncoder:
    """last_hidden_state[r, j] = (id_j * 1000 + sum of the row's ids, j); sentence_embedding[r] = (sum, length)."""

    def __init__(self, with_types: bool = False):
        self.calls: list[tuple[int, int]] = []
        self.with_types = with_types

    def __call__(self, rows: int, bucket: int, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        self.calls.append((rows, bucket))
        ids, mask = inputs["input_ids"], inputs["attention_mask"]
        assert ids.shape == mask.shape == (rows, bucket) and ids.dtype == mask.dtype == torch.long
        assert ("token_type_ids" in inputs) == self.with_types
        for r in range(rows):
            n = int(mask[r].sum())
            assert n >= 1 and mask[r, :n].all() and not mask[r, n:].any(), "graphs take right padding only"
            assert (ids[r, n:] == PAD).all(), "padding columns hold the pad token"
        summed = (ids * mask).sum(1).float()
        if self.with_types:
            summed = summed + 100_000 * (inputs["token_type_ids"] * mask).sum(1).float()
        hidden = torch.stack([ids.float() * 1000 + summed[:, None], torch.arange(bucket).float().expand(rows, -1)], -1)
        return {"last_hidden_state": hidden, "sentence_embedding": torch.stack([summed, mask.sum(1).float()], -1)}


def expected(rows: list[list[int]]) -> tuple[list[torch.Tensor], torch.Tensor]:
    hidden = [torch.tensor([[t * 1000.0 + sum(r), j] for j, t in enumerate(r)]) for r in rows]
    return hidden, torch.tensor([[float(sum(r)), float(len(r))] for r in rows])


def pad(rows: list[list[int]], width: int, left: bool, fill: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.full((len(rows), width), fill, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        cols = slice(width - len(r), width) if left else slice(0, len(r))
        ids[i, cols], mask[i, cols] = torch.tensor(r), 1
    return ids, mask


def run(fake: FakeEncoder, ids, mask, types=None):
    return run_batched(fake, input_ids=ids, attention_mask=mask, token_type_ids=types,
                       input_names=["input_ids", "attention_mask"] + ["token_type_ids"] * fake.with_types,
                       per_token=lambda name: is_per_token("feature-extraction", name),
                       batch_buckets=BATCH_BUCKETS, context_buckets=CONTEXT_BUCKETS, pad_id=PAD)


ROWS = [[5, 6], [9] * 13, [1, 2, 3, 4, 5], [8], [2] * 16, [4, 4, 4], [6] * 9, [3, 1], [11]]  # 9 rows, lengths mixed


@pytest.mark.parametrize("left", [False, True], ids=["right-padded", "left-padded"])
def test_outputs_in_caller_order_and_positions(left: bool):
    width = 16
    ids, mask = pad(ROWS, width, left)
    out = run(FakeEncoder(), ids, mask)
    hidden, pooled = expected(ROWS)
    assert torch.equal(out["sentence_embedding"], pooled)
    assert out["last_hidden_state"].shape == (len(ROWS), width, 2)
    for i, r in enumerate(ROWS):
        cols = slice(width - len(r), width) if left else slice(0, len(r))
        assert torch.equal(out["last_hidden_state"][i, cols], hidden[i])
        assert not out["last_hidden_state"][i][mask[i] == 0].any(), "padding positions hold 0"


def test_chunks_longest_first_largest_batch_then_smallest_tail():
    ids, mask = pad(ROWS, 16, left=False)
    fake = FakeEncoder()
    run(fake, ids, mask)
    # lengths sorted: 16, 13, 9, 5 | 3, 2, 2, 1 | 1 -> buckets 16, 4 and 4; the tail of one row: the 1-row graph
    assert fake.calls == [(4, 16), (4, 4), (1, 4)]


def test_short_input_and_tail_rows_padded():
    rows = [[5, 6, 7], [1, 2]]
    ids, mask = pad(rows, 3, left=False)
    fake = FakeEncoder()
    out = run(fake, ids, mask)
    assert fake.calls == [(2, 4)]
    assert out["last_hidden_state"].shape == (2, 3, 2), "per-token outputs are cut back to the caller's L columns"
    assert torch.equal(out["sentence_embedding"], expected(rows)[1])


def test_three_rows_take_the_four_row_graph():
    rows = [[1], [2], [3]]
    ids, mask = pad(rows, 1, left=False)
    fake = FakeEncoder()
    out = run(fake, ids, mask)
    assert fake.calls == [(4, 4)]  # the extra row is all pad with mask [1, 0, ...] (FakeEncoder asserts it)
    assert torch.equal(out["sentence_embedding"], expected(rows)[1])


def test_token_type_ids_follow_the_repacking():
    rows = [[5, 6, 7], [1, 2]]
    types = [[0, 1, 1], [0, 1]]
    ids, mask = pad(rows, 5, left=True)
    tt = torch.zeros_like(ids)
    tt[0, 2:], tt[1, 3:] = torch.tensor(types[0]), torch.tensor(types[1])
    out = run(FakeEncoder(with_types=True), ids, mask, tt)
    want = torch.tensor([sum(r) + 100_000 * sum(t) for r, t in zip(rows, types)]).float()
    assert torch.equal(out["sentence_embedding"][:, 0], want)


def test_plan_chunks():
    chunks = plan_chunks([3, 8, 1, 2, 2], [1, 4], [4, 8])
    assert [(c.rows, c.graph_rows, c.bucket) for c in chunks] == [([1, 0, 3, 4], 4, 8), ([2], 1, 4)]


def test_per_token_outputs_by_task():
    assert is_per_token("fill-mask", "logits") and is_per_token("token-classification", "logits")
    assert not is_per_token("text-classification", "logits") and not is_per_token("feature-extraction", "sentence_embedding")
    assert is_per_token("question-answering", "start_logits")
