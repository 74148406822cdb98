"""The decision log: what each hook call decided, chained so an edit shows, with its queries and exports."""
