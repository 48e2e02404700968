"""After training: generation, terminal chat and serving."""
