"""The seven features of a pretraining example, as every source (text pipeline, TFRecords, synthetic) yields them.

Kept TF-free and dependency-free so that the synthetic source, the trainer and the readers can share the names.
"""

FEATURES = ("input_ids", "input_mask", "segment_ids", "masked_lm_positions", "masked_lm_ids",
            "masked_lm_weights", "next_sentence_labels")
