"""The benchmarks behind `python -m core bench`: inference, data loading, training."""
