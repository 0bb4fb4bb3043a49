"""Feature schema and dataset access shared by training, export and serving (torch-free)."""
