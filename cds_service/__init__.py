"""The CDS Hooks web service and the decision log (`cds_service.app.create_app` builds the service)."""
