"""The auditor API and pages."""
