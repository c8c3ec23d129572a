"""glimpse: recurrent soft-attention action recognition from shared Zarr feature stores.

One import package over the repository's four stage folders (glimpse/<stage> is a symbolic link to each):
``glimpse.extract`` (extract/), ``glimpse.store`` (store/), ``glimpse.train`` (train/) and ``glimpse.evaluate``
(evaluate/). Above them, ``glimpse.experiments`` trains and then evaluates (the comparison table, the protocols,
the demo). The console script is :func:`glimpse.cli.main`.
"""
