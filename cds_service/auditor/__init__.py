"""The auditor pages and API: accounts, sign-in throttling, charts and the OpenAPI document."""
