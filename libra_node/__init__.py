"""libra-node: a DICOM node that drafts chest X-ray reports with Libra."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("libra-node")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"
