"""Test support: a fake provider server (`fake_providers`) and the AWS event-stream encoder."""
