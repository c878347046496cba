"""Generation: requests, the fair queue, worker supervision, job records and events."""
