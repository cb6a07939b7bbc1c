"""GLUE fine-tuning: `get_config(arg)` with arg = TASK[,tiny], TASK = cola, sst2 (default), mrpc, stsb, qqp, mnli,
qnli, rte or wnli.

The BERT recipe (../shared/docs/SPEC.md §4): batch 32, AdamW lr 3e-5 (the paper's grid: 5e-5, 3e-5, 2e-5) with 10%
warmup and linear decay, 3 epochs, dropout 0.1, sequences of 128 tokens; evaluation on dev after every epoch, the
best weights by the task's metric kept in <workdir>/model, predictions in <workdir>/predictions (dev with gold
labels, and GLUE submission files for the test sets: SST-2.tsv, MNLI-m.tsv / MNLI-mm.tsv, ...).

    python -m bert_jax convert --source uncased_L-12_H-768_A-12 --output models/bert-base-uncased
    python -m bert_jax finetune --config configs/glue.py:sst2 --workdir workdirs/sst2 \\
        --config.init_checkpoint=models/bert-base-uncased --config.data.source=../shared/data/glue/SST-2

Data: `--config.data.source` is a GLUE task folder (train.tsv, dev.tsv, test.tsv as distributed) or `tfds` (the
default: TFDS glue/<task>, which must have been prepared). Single splits: --config.data.train=FILE,
--config.data.dev=FILE (MNLI: 'dev_matched.tsv,dev_mismatched.tsv'), --config.data.test=FILE.

Modifier `tiny` (bert_jax/config_args.py): the same task on 32 training and 32 dev examples of at most 64 tokens,
8 steps of batch 8, evaluated every 4 steps: a smoke run (its scores mean nothing), e.g.
`--config configs/glue.py:sst2,tiny` with a small model as init_checkpoint.

Expect (dev, BERT-Base uncased; published test scores are a point or two lower): SST-2 accuracy ~0.92-0.93,
CoLA MCC ~0.55-0.60, MRPC F1 ~0.88-0.90, STS-B Pearson/Spearman ~0.88-0.89, QQP accuracy ~0.91, MNLI accuracy
~0.84 matched / ~0.84 mismatched, QNLI ~0.91, RTE ~0.65-0.70 (small: vary the seed), WNLI ~0.56 (the majority
class; BERT does not beat it). STS-B is trained as a regression (MSE, one output); MNLI is evaluated on both dev
sets and the best checkpoint is picked on the matched one. Without an accelerator, use a small model and e.g.
--config.data.max_train_examples=5000 --config.data.max_seq_length=64 (benchmarks/finetune_quality.py does that
with MiniLM-L6, lr 1e-4: 0.82 SST-2 dev accuracy after 3 epochs).
"""

from bert_jax import config_args
from bert_jax.finetune import default_config

TASKS = ("cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte", "wnli")


def get_config(arg=None):
    run = config_args.parse(arg and arg.lower().replace("-", ""), "configs/glue.py", TASKS, default="sst2")
    config = default_config()
    config.task.name = run.name
    config.data.source = "tfds"
    config.data.max_seq_length = 128
    config.optimizer.learning_rate = 3e-5
    config.train.batch_size = 32
    config.train.num_epochs = 3.0
    if run.name in ("mnli", "qqp", "qnli"):  # hundreds of thousands of examples: log less often
        config.train.log_every = 200
    if run.tiny:
        config_args.override(config, config_args.FINETUNING_TINY)
    return config
