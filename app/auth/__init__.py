"""API keys: creation and revocation (CLI), hashing, and the scope checks routes declare."""
