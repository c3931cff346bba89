"""What each request gets injected, kept across requests: epochs, their state file, conversations."""
