"""Training of the expert LoRA adapters (and the cross-expert fusion), validated and promoted safely.

Modules, in the order data flows through them:

* ``config``      - ``TrainConfig``: every knob, validated; YAML/JSON files.
* ``examples``    - ``TrainingExample``, its JSONL/CSV form, and the guard that refuses evaluation data.
* ``rules_data``  - examples per expert derived from the Comprehensive Rules.
* ``datasets``    - per-expert datasets from rules + feedback + admin files; the deterministic split.
* ``batching``    - tokenization with the loss on answer tokens only; padding; the token loss.
* ``checkpoint``  - atomic, exactly resumable checkpoints.
* ``trainer``     - ``LoraTrainer``: accelerate, accumulation, mixed precision, cosine warm-up, early stopping.
* ``validation``  - held-out perplexity base vs adapters, A/B ``compare``, the validation report.
* ``promotion``   - the promotion rule.
* ``fusion_train``- training and versioning the cross-expert attention.
* ``pipeline``    - ``train_expert`` and the bot's nightly ``run_retraining``.
* ``plots``, ``cli`` - the curves PNG; ``hexcore train | validate | adapters``.
"""
