"""QPM: a binary class-feature assignment found by discrete optimisation (ALGORITHMS §2).

`head` fits it; `program` builds the mixed-integer program python-mip solves, with
`constants` (its similarity and value constants), `projection` (class values projected out),
`cuts` and `cliques` (what tightens it), and `edit` the re-solve under human edits.
"""
