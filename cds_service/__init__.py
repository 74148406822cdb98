"""The CDS Hooks web service."""
