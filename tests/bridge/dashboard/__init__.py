"""Tests of the Bridge dashboard (feed, access, and the page in headless Chromium)."""
