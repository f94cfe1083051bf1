"""Packaging for jobqueue: a durable, priority-driven job-queue daemon."""

from setuptools import find_packages, setup

setup(
    name="jobqueue",
    version="0.1.0",
    description="Durable, priority-driven job-queue daemon with a LUXI-compatible protocol",
    long_description=open("README.rst", encoding="utf-8").read(),
    long_description_content_type="text/x-rst",
    python_requires=">=3.11",
    # Packages live at the checkout's root. Saying so lets an editable install
    # (make) add the checkout to sys.path with a plain .pth file: no import
    # finder loaded at every start, and no warning from setuptools.
    package_dir={"": "."},
    packages=find_packages(include=["jobqueue", "jobqueue.*"]),
    package_data={"jobqueue": ["py.typed"]},
    install_requires=[
        "pyinotify>=0.9.6",
        # pyinotify imports asyncore, which Python 3.12 removed from the stdlib.
        'pyasyncore; python_version >= "3.12"',
    ],
    extras_require={
        "test": [
            "pytest>=7.4",
            "hypothesis>=6.80",
            "pytest-timeout>=2.1",
            # The tests speak JSON as Ganeti's clients do (simplejson), apart
            # from the daemon's own encoder (the stdlib's json).
            "simplejson>=3.17",
        ],
        "lint": [
            "ruff>=0.4",
            "mypy>=1.8",
        ],
    },
    entry_points={
        "console_scripts": [
            "jobqueue-masterd=jobqueue.daemon:main",
            "jobctl=jobqueue.cli.main:main",
            "jobqueue-cleaner=jobqueue.cleaner:main",
        ],
    },
    classifiers=[
        "Programming Language :: Python :: 3.11",
        "Operating System :: POSIX :: Linux",
        "Topic :: System :: Distributed Computing",
    ],
)
