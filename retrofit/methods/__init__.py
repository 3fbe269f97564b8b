"""Head methods, one folder each (`methods/<name>/`), registered in `retrofit.registry.HEADS`.

A method folder holds everything the method owns: its head (`head.py`, which registers it),
its solver program, settings and metrics. `base` is the contract every head meets
(`HeadResult`, `register_head`, `get_head`); `prior` the per-class feature priors heads share.
Importing this package imports no method: the registry imports one on first use.
"""
