"""Recipes shipped by the InternLM2 plugin (YAML data files)."""
