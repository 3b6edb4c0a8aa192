"""fastlenet's benchmark suite (pytest-benchmark): every usable backend against PyTorch CPU.

Run it with ``python -m pytest benchmarks`` and render a saved run with
``python -m benchmarks.render RESULTS.json``; benchmarks/README.md says more.
"""
