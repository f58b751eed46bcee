"""In-process fakes of external services, served over real sockets where the production code speaks HTTP."""
