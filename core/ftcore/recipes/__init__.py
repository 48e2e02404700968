"""Recipes shipped with the core (YAML data files)."""
