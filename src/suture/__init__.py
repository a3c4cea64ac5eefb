"""suture: patch the OS packages of container images without a container engine."""

__version__ = "0.1.0"
