"""Fitting: `convert()` and what it runs on cached features after extraction.

`convert` orchestrates; `layer_fit` fits the interpretable layer (a registered head method,
then the bottleneck of `bottleneck`), `finetune` trains the backbone when asked, `reweight`
and `consistency_cache` implement reweight="consistency", `losses` holds the shared losses.
"""
