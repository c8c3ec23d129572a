"""glimpse: recurrent soft-attention action recognition from shared Zarr feature stores.

One import package over the repository's four stage folders (setuptools maps them, see pyproject.toml):
``glimpse.extract`` (extract/), ``glimpse.store`` (store/), ``glimpse.train`` (train/) and ``glimpse.evaluate``
(evaluate/). The console script is :func:`glimpse.cli.main`.
"""
