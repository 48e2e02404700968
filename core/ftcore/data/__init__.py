"""The data pipeline: load -> format map -> template -> encode (labels masked) -> pack -> collate."""
