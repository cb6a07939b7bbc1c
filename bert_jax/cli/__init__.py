"""One module per `python -m bert_jax <command>`: absl flags defined at import, plus `main(argv)`.

Each module is imported only when its command runs, so the flags of different commands never clash
and `tokenize` does not pay for importing JAX.
"""
