"""Training jobs: budgets, early stopping, local and Vertex AI backends."""
