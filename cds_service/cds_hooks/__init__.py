"""The CDS Hooks HTTP layer: discovery, service calls and feedback; token checks, prefetch fetching, the pipeline."""
