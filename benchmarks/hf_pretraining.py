"""The Hugging Face side of the pretraining benchmarks: a bert_jax pretraining batch as BertForPreTraining's inputs.

Shared by benchmarks/pretrain_step.py and benchmarks/accelerator.py (imported as a sibling of the script).
"""

from __future__ import annotations

import numpy as np


def hf_pretraining_inputs(batch: dict, device="cpu") -> dict:
    """BertForPreTraining's keyword arguments for a pretraining batch: MLM labels at the weighted masked positions,
    -100 elsewhere (so both losses average over the same tokens)."""
    import torch  # the benchmarks' peer; bert_jax itself never needs it

    t = {k: torch.from_numpy(np.asarray(v)) for k, v in batch.items()}
    ids = t["input_ids"].long()
    labels = torch.full_like(ids, -100)
    weighted = t["masked_lm_weights"] > 0
    rows = torch.arange(ids.shape[0])[:, None].expand_as(weighted)
    labels[rows[weighted], t["masked_lm_positions"].long()[weighted]] = t["masked_lm_ids"].long()[weighted]
    inputs = dict(input_ids=ids, attention_mask=t["input_mask"].long(), token_type_ids=t["segment_ids"].long(),
                  labels=labels, next_sentence_label=t["next_sentence_labels"].long())
    return {k: v.to(device) for k, v in inputs.items()}
