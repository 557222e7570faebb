"""The durable job queue: jobs are rows; workers claim, heartbeat and finish them."""
