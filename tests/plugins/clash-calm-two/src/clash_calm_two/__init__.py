"""Test fixture: claims the head name 'clash.head' (so does its twin)."""
