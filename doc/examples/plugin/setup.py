"""Packaging for the example plugin: registers its opcodes with jobqueue."""

from setuptools import setup

setup(
    name="jobqueue-example-plugin",
    version="0.1.0",
    py_modules=["jobqueue_example_plugin"],
    install_requires=["jobqueue"],
    entry_points={"jobqueue.opcodes": ["example = jobqueue_example_plugin:opcode_pairs"]},
)
