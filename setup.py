"""Only the optional C accelerator; all other metadata is in pyproject.toml.

optional=True: without a compiler the build is skipped and pgoutput.py falls back to
its pure-Python `tuple_values`.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "recovery.capture._pgoutput",
            ["recovery/capture/_pgoutput.c"],
            optional=True,
        )
    ]
)
