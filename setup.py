"""Builds the optional compiled allocation core; everything else is configured in pyproject.toml.

The extension is optional: where no C compiler is available the install still succeeds and the
controller uses its pure-Python allocator (same results, slower on very large sites).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension("controller._allocc", ["controller/_allocc.c"], optional=True, extra_compile_args=["-O2"]),
    ]
)
