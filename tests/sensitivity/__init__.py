"""Tests of the tests: each core claim's check, run on a deliberately broken library, must fail (issue 11)."""
