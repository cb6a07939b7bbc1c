"""Named-entity recognition configs: `get_config('conll2003')` (the only one so far).

CoNLL-2003 English with IOB2 tags; each word is tagged from its first word piece (the others are ignored by the
loss), sentences longer than a window are split at word boundaries. Recipe: batch 32, AdamW lr 5e-5 with 10%
warmup, 3 epochs, 128 tokens. The best weights by entity-level F1 on the validation set go to <workdir>/model;
<workdir>/predictions holds the CoNLL columns with the predicted tag appended (conlleval's layout).

    python -m bert_jax finetune --config configs/ner.py:conll2003 --workdir workdirs/conll2003 \\
        --config.init_checkpoint=models/bert-base-cased --config.data.source=../shared/data/conll2003

Expect entity F1 ~0.95 on validation and ~0.91 on test with BERT-Base cased (the paper: 96.4 dev / 92.4 test,
with document context; this per-sentence setup is a little lower). Use a cased model: capitalisation is much of
the signal for names.
"""

from bert_jax.finetune import default_config


def get_config(arg=None):
    task = arg or "conll2003"
    if task != "conll2003":
        raise ValueError(f"configs/ner.py: unknown NER task {arg!r}; use conll2003")
    config = default_config()
    config.task.name = "conll2003"
    config.data.source = "tfds"
    config.data.max_seq_length = 128
    config.optimizer.learning_rate = 5e-5
    config.train.batch_size = 32
    config.train.num_epochs = 3.0
    config.train.log_every = 100
    return config
