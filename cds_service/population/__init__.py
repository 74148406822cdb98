"""Population runs as the web service sees them: the job tables and status views (the work is in worker/)."""
