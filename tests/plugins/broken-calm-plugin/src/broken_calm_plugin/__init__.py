"""Test fixture package of deliberately broken plugins."""
