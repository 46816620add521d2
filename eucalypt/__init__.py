"""eucalypt: an EC2- and S3-compatible private cloud. This package holds the `eucalypt`
command and what every component shares (request signing, the clock)."""

__version__ = "0.1.0"
