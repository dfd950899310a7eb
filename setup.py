"""Build glue that pyproject.toml cannot express: the cffi extension mwcomms._native."""
from setuptools import setup

setup(cffi_modules=["mwcomms/_native_build.py:ffibuilder"])
