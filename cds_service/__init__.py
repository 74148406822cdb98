"""The CDS Hooks web service."""

from cds_service.app import create_app

__all__ = ["create_app"]
