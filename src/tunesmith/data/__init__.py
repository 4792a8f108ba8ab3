"""The data path: sources -> formats -> tokenize -> cache -> mixing -> packing -> loader.

Entry point: `tunesmith.data.loader.build_dataloaders(cfg, tokenizer, rank, world, ...)`;
`tunesmith data preview cfg.yaml` shows what it builds. User guide: docs/data.md.
"""
