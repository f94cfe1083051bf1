"""Packaging for jobqueue: a durable, priority-driven job-queue daemon."""

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext


class OptionalBuildExt(build_ext):
    """Build the C helper when a compiler and the Python headers are there; else skip it.

    jobqueue.storage.jobwriter falls back to its pure-Python twin when the
    helper cannot be imported, so a failed build only costs speed.
    """

    def run(self) -> None:
        try:
            super().run()
        except Exception as err:  # no compiler at all
            self._skip(err)

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as err:  # no headers, a compile or link error
            self._skip(err)

    def _skip(self, err: Exception) -> None:
        print(f"jobqueue: not building the optional C write helper ({err}); using Python")


# The etcd store (high availability) talks to etcd's v3 JSON gateway: calls
# through the standard library, watch streams through requests; doc/ha.rst
# says why. Tested against etcd 3.4.
ETCD_REQUIRES = ["requests>=2.25,<3"]
# jobqueue-rapi (doc/rapi.rst): aiohttp serves HTTP(S) and the dashboard's
# event streams; the official Prometheus client writes /metrics. The master
# daemon needs neither.
RAPI_REQUIRES = ["aiohttp>=3.9,<4", "prometheus-client>=0.17"]

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
    package_data={"jobqueue": ["py.typed", "rapi/static/*"]},
    ext_modules=[
        Extension(
            "jobqueue.storage._fastwrite",
            ["jobqueue/storage/_fastwrite.c"],
            optional=True,
            extra_compile_args=["-O2"],
        )
    ],
    cmdclass={"build_ext": OptionalBuildExt},
    install_requires=[
        "pyinotify>=0.9.6",
        # pyinotify imports asyncore, which Python 3.12 removed from the stdlib.
        'pyasyncore; python_version >= "3.12"',
        # Query filters' regular expressions: RE2 matches in linear time and
        # releases the interpreter lock (see jobqueue/qlang.py). Google's own
        # binding, with wheels for CPython 3.11+ on Linux.
        "google-re2>=1.1",
        # Every job version is encoded as JSON; orjson does it several times
        # faster than the stdlib (jobqueue/storage/base.py falls back to the
        # stdlib for what orjson refuses, and where it is not installed).
        "orjson>=3.9,<4",
    ],
    extras_require={
        "test": [
            "pytest>=7.4",
            "hypothesis>=6.80",
            "pytest-timeout>=2.1",
            # The tests speak JSON as Ganeti's clients do (simplejson), apart
            # from the daemon's own encoder (the stdlib's json).
            "simplejson>=3.17",
            # The etcd tests run whenever an etcd server binary is found.
            *ETCD_REQUIRES,
            *RAPI_REQUIRES,
            # A test certificate for jobqueue-rapi's HTTPS.
            "cryptography>=41",
            # The dashboard in a real browser (Debian's chromium and its driver).
            "selenium>=4.10",
            # Every .rst of the project parses cleanly (and make man builds).
            "docutils>=0.23",
        ],
        "etcd": ETCD_REQUIRES,
        "rapi": RAPI_REQUIRES,
        "lint": [
            "ruff>=0.4",
            "mypy>=1.8",
            # mypy checks the etcd wrapper and jobqueue-rapi against their libraries' types.
            *ETCD_REQUIRES,
            *RAPI_REQUIRES,
            "types-requests",
        ],
    },
    entry_points={
        "console_scripts": [
            "jobqueue-masterd=jobqueue.daemon:main",
            "jobctl=jobqueue.cli.main:main",
            "jobqueue-cleaner=jobqueue.cleaner:main",
            "jobqueue-rapi=jobqueue.rapi.main:main",
        ],
    },
    classifiers=[
        "Programming Language :: Python :: 3.11",
        "Operating System :: POSIX :: Linux",
        "Topic :: System :: Distributed Computing",
    ],
)
