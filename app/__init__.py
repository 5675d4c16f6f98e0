"""leasegate: one agent run per session across every worker and replica."""
