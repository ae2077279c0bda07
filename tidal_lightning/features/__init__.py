"""Feature spaces for the coverage strategies and the cold start (`strategy.features`).

`model` reads the pool pass's penultimate embeddings; `simclr` trains (once per dataset,
cached) a self-supervised encoder on the unlabeled pool; `timm` uses a timm backbone with
pretrained weights. `sources.compute_features` returns `[N, D]` features for dataset
indices from any of the last two.
"""
