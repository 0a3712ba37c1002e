"""`ownership-ctx demo`: two simulated weeks of traffic through every part, then the reports."""
