"""The data pipeline: load -> format map -> template -> encode (labels masked) -> pack -> collate."""

#: The label of a token the model is not trained to predict (prompts, padding, a sample's first token).
IGNORE = -100
