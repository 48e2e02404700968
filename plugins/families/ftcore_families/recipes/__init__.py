"""Recipes shipped by the families plugin (YAML data files)."""
