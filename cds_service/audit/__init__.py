"""The tamper-evident decision log and what auditors use to read it."""
