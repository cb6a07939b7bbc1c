"""bert_jax: Google's BERT in JAX/Flax, faithful to the original release.

Importing the package is cheap: heavy modules (jax, tensorflow) load only when a submodule is used.
"""

__version__ = "0.1.0"
