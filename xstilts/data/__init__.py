"""Data layer: task tables, registry, sources, readers, featurization and batching."""
