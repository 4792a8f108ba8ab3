"""The data path: sources -> formats -> tokenize -> (packing, mixing) -> loader.

Entry point: `tunesmith.data.loader.build_dataloaders(cfg, tokenizer, rank, world, ...)`.
"""
