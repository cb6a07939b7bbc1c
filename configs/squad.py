"""SQuAD fine-tuning: `get_config(arg)` with arg = VERSION[,tiny], VERSION = v1.1 (default) or v2.0.

Google's run_squad.py recipe: windows of 384 tokens with a stride of 128, questions cut at 64 tokens, batch 32,
AdamW with 10% warmup, 2 epochs (v1.1: lr 3e-5; v2.0: lr 5e-5), answers at most 30 tokens from the 20 best starts
and ends. After every epoch the dev set is decoded and scored with the official metrics; the best weights by F1
are kept in <workdir>/model and <workdir>/predictions holds validation_predictions.json,
validation_nbest_predictions.json and (v2.0) validation_null_odds.json, which the official evaluation script or
`python -m bert_jax evaluate-squad` read.

    python -m bert_jax finetune --config configs/squad.py:v1.1 --workdir workdirs/squad \\
        --config.init_checkpoint=models/bert-base-uncased --config.data.source=path/to/squad
        # the folder holds train-v1.1.json and dev-v1.1.json; or --config.data.train=FILE --config.data.dev=FILE

Modifier `tiny` (`configs/squad.py:v2.0,tiny`, bert_jax/config_args.py): 32 training and 32 dev questions in
windows of 64 tokens (questions cut at 16, a stride of 32), 8 steps of batch 8, evaluated every 4: a smoke run.

Expect (dev, BERT-Base uncased): v1.1 EM ~80.8 / F1 ~88.5; v2.0 F1 ~76 (BERT-Large: v1.1 84.1/90.9, v2.0 ~81.9).
For v2.0, set --config.decode.null_score_diff_threshold to the best_f1_thresh the evaluation reports.
"""

from bert_jax import config_args
from bert_jax.finetune import default_config

VERSIONS = ("v1.1", "v2.0")


def get_config(arg=None):
    run = config_args.parse(arg, "configs/squad.py", VERSIONS, default="v1.1")
    config = default_config()
    config.task.name = f"squad_{run.name}"
    config.data.source = "tfds"
    config.data.max_seq_length = 384
    config.data.doc_stride = 128
    config.data.max_query_length = 64
    config.optimizer.learning_rate = 3e-5 if run.name == "v1.1" else 5e-5
    config.train.batch_size = 32
    config.train.num_epochs = 2.0
    config.train.log_every = 200
    config.decode.n_best_size = 20
    config.decode.max_answer_length = 30
    if run.tiny:
        config_args.override(config, {**config_args.FINETUNING_TINY, "data.doc_stride": 32,
                                      "data.max_query_length": 16})
    return config
