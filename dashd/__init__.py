"""dashd: a self-hosted device management dashboard for IoT fleets."""

__version__ = "0.1.0"
