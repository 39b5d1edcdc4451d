"""The benchmark suite: ``python bench/run.py --help``. See docs/performance.md."""
