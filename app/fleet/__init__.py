"""What operators see of the whole server: its workers and its sessions with work."""
