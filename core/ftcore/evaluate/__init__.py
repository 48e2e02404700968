"""``ftcore eval``: multiple-choice accuracy, generation scores (ROUGE, BLEU, exact match) and
lm-evaluation-harness tasks on a model, a checkpoint or an adapter, loaded as ``ftcore chat`` loads it."""
