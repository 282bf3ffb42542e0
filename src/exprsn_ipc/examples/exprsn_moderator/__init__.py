"""exprsn-moderator, an example service migrated to exprsn-ipc by the guide's eight steps (see app.py)."""
