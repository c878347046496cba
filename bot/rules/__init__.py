"""Every rule about whether and how a job runs, applied in one place (bot/jobs.py `Jobs`)."""
