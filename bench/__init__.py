"""wire's benchmark suite, run by hand: ``python bench/run_all.py`` (see README.md)."""
