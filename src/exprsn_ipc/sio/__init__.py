"""The lean Socket.IO subset the IPC workers and the Bridge's worker lane speak (see ``SPEC.md``)."""
