# The cffi module in cext/ is built by the package install (pip install -e . included).
from setuptools import setup

setup(cffi_modules=["cext/build_bpfbatch.py:ffibuilder"])
