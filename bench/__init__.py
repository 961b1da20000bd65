"""drainwatch's benchmark suite: ``python -m bench [--quick] [--output docs/performance.md]``.

Every figure is a ratio against a baseline measured in the same run, in alternating order,
so machine drift and noisy neighbours cancel out instead of failing a build.
"""
