"""Chat templates shipped with ftcore, one YAML data file each (see CONTRIBUTING.md for the fields)."""
