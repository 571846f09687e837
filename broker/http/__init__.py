"""HTTP plumbing below every route: reading bodies and forms, problem documents, the access
log, forwarded client addresses; and the dependencies routes share (``deps``)."""
