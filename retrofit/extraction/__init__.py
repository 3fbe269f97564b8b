"""Extraction: run the backbone once over the data and keep its pooled features (and maps).

`features.extract` hooks the penultimate layer (`hooks`, `pooled_layers`), reads loaders of
any shape (`loaders`, `inputs`, `preprocessing`, `outputs`), and stores what it read in a
fingerprinted, resumable cache (`cache`, `fingerprint`, `streaming`), across processes when
asked (`distributed`, `data_parallel`, `rank_batches`). Nothing here fits anything.
"""
