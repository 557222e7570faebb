"""The HTTP boundary shared by every domain's routes: dependencies, middleware, errors."""
