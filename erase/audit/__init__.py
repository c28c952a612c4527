"""Auditing: suites -> generation -> detectors -> attacks -> metrics -> report (see ARCHITECTURE.md)."""
