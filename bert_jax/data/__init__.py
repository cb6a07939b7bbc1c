"""Pretraining data, split by job. Imports run one way: nothing here imports the trainers (pretrain, finetune),
and importing any of these modules imports no TensorFlow (the TF-only code imports it when it runs).

  features.py        the seven features every pretraining source yields
  synthetic.py       learnable synthetic batches (tests, benchmarks, data.source='synthetic')
  builtin_corpus.py  CPython's documentation as a small text corpus (data.source='builtin')
  text_reader.py     input files -> documents of sentences, with skip accounting; `resolve_input_files`
  instances.py       SPEC §1: documents -> TrainingInstances (NSP pairs, truncation, masked-LM predictions)
  masking.py         the same masking as a TensorFlow op, for dynamic masks inside tf.data
  tfrecord.py        TFRecord framing (written and read, both CRCs checked) and tf.train.Example encoding
  offline_writer.py  the parallel offline writer: text -> sharded TFRecords + pretraining_data.json
  blocks.py          the pipeline's Python stages: host shards, positions, numbered blocks, pairing
  pipeline.py        the tf.data pipeline over text or TFRecords, configured by one PipelineSpec
  tfrecord_input.py  pretraining on TFRecords: kind found from content, records checked against a phase
  packing.py         SPEC §5: several whole instances per row
"""
